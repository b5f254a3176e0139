"""The CPU layer tables rerun on CuPy: each row's layer is built twice (numpy, CuPy) with the
same parameters and bottoms; forward tops and backward diffs on the GPU must match numpy's.

float64 rows, so the tolerances only allow for summation order (cuDNN, reductions).
Rows whose layer draws random numbers in TRAIN (Dropout, STOCHASTIC pooling) compare in TEST
only: the xp generators differ between numpy and CuPy.
"""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.backend import to_host
from netforge.graph.compile import compile_net
from netforge.layers.base import LayerContext
from tests.layers import (
    test_layers,
    test_loss_layers,
    test_neuron_layers,
    test_normalization_layers,
    test_structure_layers,
    test_vision_layers,
)

TABLES = [test_layers, test_loss_layers, test_neuron_layers, test_normalization_layers,
          test_structure_layers, test_vision_layers]
RANDOM_IN_TRAIN = ("Dropout", "STOCHASTIC")


def _row_text(module, row) -> str:
    """The neuron table keeps only the layer's params; the others keep the whole layer."""
    if module is test_neuron_layers:
        return module._layer_text(row[0], row[1])
    return row[1]


def _rows():
    for module in TABLES:
        for row in module.ROWS:
            text, bottoms = _row_text(module, row), row[2]
            phase = row[5] if len(row) > 5 and isinstance(row[5], str) else "TRAIN"
            if phase == "TRAIN" and any(word in text for word in RANDOM_IN_TRAIN):
                continue
            yield pytest.param(text, bottoms, phase, id=f"{module.__name__.rsplit('.', 1)[1]}"
                               f"::{row[0]}")


def _build(text, bottoms, phase, xp):
    net = pb.NetParameter(name="gpu-table", force_backward=True)
    for j, array in enumerate(bottoms):
        inp = net.layer.add(name=f"input{j}", type="Input")
        inp.top.append(f"b{j}")
        inp.input_param.shape.add().dim.extend(np.shape(array))
    config.parse_text(text, net.layer.add(), "layer under test")
    ctx = LayerContext(phase=phase, dtype=np.dtype(np.float64), xp=xp,
                       rng=np.random.default_rng(1701))
    plan = compile_net(net, ctx)
    for j, array in enumerate(bottoms):
        plan.blobs[f"b{j}"].data[...] = xp.asarray(array)
    return plan, plan.steps[-1]


def _run(plan, step, xp, seed=5):
    for s in plan.steps:
        s.layer.forward(s.bottoms, s.tops)
    rng = np.random.default_rng(seed)
    for top in step.tops:
        top.diff[...] = xp.asarray(rng.standard_normal(top.shape))
    for blob in step.layer.blobs:
        blob.diff[...] = 0
    if step.layer.has_backward:
        propagate = [j not in step.layer.no_gradient_bottoms for j in range(len(step.bottoms))]
        step.layer.backward(step.tops, propagate, step.bottoms)
    return ([to_host(t.data) for t in step.tops],
            [to_host(b.diff) for j, b in enumerate(step.bottoms)
             if step.layer.has_backward and j not in step.layer.no_gradient_bottoms],
            [to_host(b.diff) for b in step.layer.blobs] if step.layer.has_backward else [])


@pytest.mark.parametrize("text, bottoms, phase", list(_rows()))
def test_layer_matches_numpy_on_cupy(cupy, text, bottoms, phase):
    cpu_plan, cpu_step = _build(text, bottoms, phase, np)
    gpu_plan, gpu_step = _build(text, bottoms, phase, cupy)
    for cpu_blob, gpu_blob in zip(cpu_step.layer.blobs, gpu_step.layer.blobs, strict=True):
        gpu_blob.data[...] = cupy.asarray(cpu_blob.data)  # the same parameters
    want = _run(cpu_plan, cpu_step, np)
    got = _run(gpu_plan, gpu_step, cupy)
    for kind, w_list, g_list in zip(("top", "bottom diff", "param diff"), want, got,
                                    strict=True):
        for w, g in zip(w_list, g_list, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11, err_msg=kind)
