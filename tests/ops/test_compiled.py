"""Every compiled kernel (netforge.ops.compiled) against the reference numpy path of the same
op (NETFORGE_NO_JIT=1), on the same inputs: float64 to 1e-12 where the kernel computes in the
data's type, float32 to float32 tolerance. A spy on ``compiled.load`` proves that the
compiled path ran (a row whose dispatch silently fell back would fail).

The reference path itself is checked against naive loops and finite differences in the
other tests of tests/ops; those tests run the compiled path whenever numba is installed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.blob import Blob
from netforge.graph.compile import LearnableParam
from netforge.ops import compiled, loss, neuron, normalization, pooling
from netforge.ops.xp import allocate
from netforge.train.update_rules import make_update_rule

pytestmark = pytest.mark.skipif(not compiled.available(), reason="numba is not installed")

TOLERANCE = {np.float64: 1e-12, np.float32: 2e-5}


def _pool_ws(kind, x, y, kernel, stride, pad):
    spec = getattr(pooling, f"{kind}_pool_workspace_shapes")
    extra = {"index_dtype": np.int32} if kind == "max" else {}
    return allocate(spec(x.shape, y.shape, kernel=kernel, stride=stride, pad=pad,
                         dtype=x.dtype, **extra), np)


def _pool_case(kind, shape, kernel, stride, pad):
    def build(rng, dtype):
        x = rng.standard_normal(shape).astype(dtype)
        x[0, 0, 0, :2] = x[0, 0, 0, 0]  # a tie: the first maximum wins
        oh = pooling.pool_output_size(shape[2], kernel[0], pad[0], stride[0])
        ow = pooling.pool_output_size(shape[3], kernel[1], pad[1], stride[1])
        y = np.zeros((shape[0], shape[1], oh, ow), dtype)
        dy = rng.standard_normal(y.shape).astype(dtype)
        arrays = {"x": x, "y": y, "dy": dy, "dx": np.zeros_like(x),
                  "argmax": np.zeros(y.shape, np.int32)}
        window = {"kernel": kernel, "stride": stride, "pad": pad}

        def run(a):
            ws = _pool_ws(kind, a["x"], a["y"], kernel, stride, pad)
            if kind == "max":
                pooling.max_pool_forward(a["x"], a["y"], a["argmax"], ws=ws, **window)
                pooling.max_pool_backward(a["dy"], a["argmax"], a["dx"], ws=ws, **window)
            else:
                pooling.ave_pool_forward(a["x"], a["y"], ws=ws, **window)
                pooling.ave_pool_backward(a["dy"], a["dx"], ws=ws, **window)
        return arrays, run
    return build


def _max_values_case(shape, kernel, stride, pad):
    """MAX forward without the argmax (predict's form), NaN and -inf pixels included."""
    def build(rng, dtype):
        x = rng.standard_normal(shape).astype(dtype)
        x.flat[::5] = np.nan
        x.flat[1::7] = -np.inf
        x[0, 0] = np.nan  # a whole plane of NaN: every window gives -FLT_MAX
        oh = pooling.pool_output_size(shape[2], kernel[0], pad[0], stride[0])
        ow = pooling.pool_output_size(shape[3], kernel[1], pad[1], stride[1])
        arrays = {"x": x, "y": np.zeros((shape[0], shape[1], oh, ow), dtype)}

        def run(a):
            ws = _pool_ws("max", a["x"], a["y"], kernel, stride, pad)
            pooling.max_pool_forward(a["x"], a["y"], None, kernel=kernel, stride=stride,
                                     pad=pad, ws=ws)
        return arrays, run
    return build


def _relu_case(slope):
    def build(rng, dtype):
        x = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
        x.flat[:3] = (0.0, -np.inf, np.nan)
        arrays = {"x": x, "y": np.zeros_like(x), "dy": rng.standard_normal(x.shape).astype(dtype),
                  "dx": np.zeros_like(x)}

        def run(a):
            ws = allocate(neuron.relu_workspace_shapes(x.shape, dtype, negative_slope=slope), np)
            neuron.relu_forward(a["x"], a["y"], negative_slope=slope, ws=ws)
            neuron.relu_backward(a["dy"], a["x"], a["dx"], negative_slope=slope, ws=ws)
        return arrays, run
    return build


def _softmax_loss_case(shape, ignore_label, normalization_mode):
    def build(rng, dtype):
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        n, c = shape[0], shape[1]
        label = rng.integers(0, c, size=(n, *shape[2:])).astype(dtype)
        if ignore_label is not None:
            label.flat[::3] = ignore_label
        arrays = {"x": x, "label": label, "prob": np.zeros_like(x), "dx": np.zeros_like(x),
                  "loss": np.zeros(1), "loss_out": np.zeros(())}
        kw = {"ignore_label": ignore_label, "normalization": normalization_mode}

        def run(a):
            ws = allocate(loss.loss_workspace_shapes(x.shape, 1, dtype), np)
            a["loss"][0] = loss.softmax_loss_forward(a["x"], a["label"], a["prob"], ws=ws, **kw)
            # The step's form: the loss assigned to a 0-d array (a device buffer on a GPU).
            assert loss.softmax_loss_forward(a["x"], a["label"], a["prob"], ws=ws,
                                             out=a["loss_out"], **kw) is a["loss_out"]
            assert float(a["loss_out"]) == a["loss"][0]
            loss.softmax_loss_backward(a["prob"], a["label"], a["dx"], loss_weight=0.7, ws=ws,
                                       **kw)
        return arrays, run
    return build


def _batch_norm_case(kind):
    def build(rng, dtype):
        shape = (6, 4, 10)
        x = (2 + 3 * rng.standard_normal(shape)).astype(dtype)
        c = shape[1]
        arrays = {"x": x, "y": np.zeros_like(x), "x_norm": np.zeros_like(x),
                  "mean": np.zeros(c, dtype), "var": np.zeros(c, dtype),
                  "inv_std": np.zeros(c, dtype), "dy": rng.standard_normal(shape).astype(dtype),
                  "dx": np.zeros_like(x)}
        if kind == "global":
            arrays["mean"] = rng.standard_normal(c).astype(dtype)
            arrays["inv_std"] = rng.uniform(0.5, 2, c).astype(dtype)

        def run(a):
            ws = allocate(normalization.batch_norm_workspace_shapes(shape, dtype), np)
            if kind == "global":
                normalization.batch_norm_forward_global(a["x"], a["y"], a["mean"], a["inv_std"])
                return
            normalization.batch_norm_forward_train(a["x"], a["y"], a["x_norm"], a["mean"],
                                                   a["var"], a["inv_std"], eps=1e-5, ws=ws)
            normalization.batch_norm_backward_train(a["dy"], a["x_norm"], a["inv_std"], a["dx"],
                                                    ws=ws)
        return arrays, run
    return build


def _lrn_case(beta):
    def build(rng, dtype):
        shape = (2, 7, 4, 3)
        x = rng.standard_normal(shape).astype(dtype)
        arrays = {"x": x, "y": np.zeros_like(x), "scale": np.zeros_like(x),
                  "inv_pow": np.zeros_like(x), "dy": rng.standard_normal(shape).astype(dtype),
                  "dx": np.zeros_like(x)}
        kw = {"size": 5, "alpha": 0.3, "beta": beta, "region": normalization.ACROSS_CHANNELS}

        def run(a):
            ws = allocate(normalization.lrn_workspace_shapes(shape, dtype), np)
            normalization.lrn_forward(a["x"], a["y"], a["scale"], a["inv_pow"], k=1.5, ws=ws,
                                      **kw)
            normalization.lrn_backward(a["dy"], a["x"], a["scale"], a["inv_pow"], a["dx"],
                                       ws=ws, **kw)
        return arrays, run
    return build


RULES = {
    "SGD": 'type: "SGD" momentum: 0.9',
    "Nesterov": 'type: "Nesterov" momentum: 0.9',
    "AdaGrad": 'type: "AdaGrad" delta: 1e-6',
    "RMSProp": 'type: "RMSProp" rms_decay: 0.95 delta: 1e-6',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.95 delta: 1e-6',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8',
}


def _update_case(rule, regularization, skip_from=None):
    """4 updates of 2 parameters; with ``skip_from`` the divergence guard's device flag is
    raised from that iteration on (sticky): the weights must stay where they were then, and
    the history must move alike on both paths."""
    def build(rng, dtype):
        start = [rng.standard_normal((3, 5)).astype(dtype), rng.standard_normal(5).astype(dtype)]
        grads = [[rng.standard_normal(s.shape).astype(dtype) for s in start] for _ in range(4)]
        arrays = {"w0": start[0], "w1": start[1]}
        sp = config.parse_text(f'{RULES[rule]} weight_decay: 0.01 iter_size: 2 '
                               f'regularization_type: "{regularization}"', pb.SolverParameter())

        def run(a):
            params = []
            for k in range(2):
                blob = Blob(start[k].shape, dtype)
                blob.data[...] = a[f"w{k}"]
                params.append(LearnableParam(blob, "layer", k, 1.0 + k, 1.0 - k))
            update = make_update_rule(sp, params)
            skip = np.zeros((), dtype=bool) if skip_from is not None else None
            held = None
            for it, step in enumerate(grads):
                if it == skip_from:
                    skip[...] = True
                    held = [p.blob.data.copy() for p in params]
                for p, g in zip(params, step, strict=True):
                    p.blob.diff[...] = g
                update.apply(0.05 * 0.9**it, it, skip=skip)
            for k, p in enumerate(params):
                a[f"w{k}"][...] = p.blob.data
                if held is not None:
                    np.testing.assert_array_equal(p.blob.data, held[k])
            if skip_from is not None:
                for s, slot in enumerate(update.history):
                    for k, h in enumerate(slot):
                        a[f"h{s}_{k}"] = np.array(h)
        return arrays, run
    return build


ROWS = {
    # name: (kernel module the compiled path must load, case builder)
    "max_pool_2x2_s2": ("pooling", _pool_case("max", (3, 4, 9, 8), (2, 2), (2, 2), (0, 0))),
    "max_pool_3x3_s2_pad1": ("pooling", _pool_case("max", (2, 3, 9, 7), (3, 3), (2, 2), (1, 1))),
    "max_pool_3x2_s3_overhang": ("pooling",
                                 _pool_case("max", (2, 3, 8, 7), (3, 2), (3, 3), (0, 0))),
    "max_pool_values_3x3_s2": ("pooling", _max_values_case((2, 3, 13, 11), (3, 3), (2, 2),
                                                           (0, 0))),
    "max_pool_values_3x2_s1_pad1": ("pooling", _max_values_case((2, 3, 8, 7), (3, 2), (1, 1),
                                                                (1, 1))),
    "ave_pool_3x3_s2_pad1": ("pooling", _pool_case("ave", (2, 3, 9, 7), (3, 3), (2, 2), (1, 1))),
    "ave_pool_2x2_s2": ("pooling", _pool_case("ave", (3, 4, 8, 8), (2, 2), (2, 2), (0, 0))),
    "relu": ("elementwise", _relu_case(0.0)),
    "leaky_relu": ("elementwise", _relu_case(0.1)),
    "softmax_loss": ("loss", _softmax_loss_case((8, 5), None, "VALID")),
    "softmax_loss_spatial_ignore": ("loss", _softmax_loss_case((3, 4, 2, 3), 2, "VALID")),
    "softmax_loss_full": ("loss", _softmax_loss_case((3, 4, 5), 1, "FULL")),
    "batch_norm_train": ("normalization", _batch_norm_case("train")),
    "batch_norm_global": ("normalization", _batch_norm_case("global")),
    "lrn_across_0.75": ("normalization", _lrn_case(0.75)),
    "lrn_across_0.6": ("normalization", _lrn_case(0.6)),
    **{f"update_{rule}_{reg}": ("update_rules", _update_case(rule, reg))
       for rule in RULES for reg in ("L2", "L1")},
    **{f"update_{rule}_skipped": ("update_rules", _update_case(rule, "L2", skip_from=2))
       for rule in RULES},
}


def _run(build, dtype, monkeypatch, jit: bool):
    arrays, run = build(np.random.default_rng(7), dtype)
    arrays = copy.deepcopy(arrays)
    loaded = []
    real_load = compiled.load
    monkeypatch.setattr(compiled, "load", lambda name: loaded.append(name) or real_load(name))
    if jit:
        monkeypatch.delenv("NETFORGE_NO_JIT", raising=False)
    else:
        monkeypatch.setenv("NETFORGE_NO_JIT", "1")
    run(arrays)
    monkeypatch.undo()
    return arrays, loaded


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(ROWS))
def test_compiled_kernel_matches_reference(name, dtype, monkeypatch):
    module, build = ROWS[name]
    want, loaded_ref = _run(build, dtype, monkeypatch, jit=False)
    got, loaded = _run(build, dtype, monkeypatch, jit=True)
    assert not loaded_ref, "NETFORGE_NO_JIT=1 must not load compiled kernels"
    assert module in loaded, f"the compiled {module} kernel did not run"
    tol = TOLERANCE[dtype]
    for key, expected in want.items():
        if expected.dtype.kind in "iu":
            np.testing.assert_array_equal(got[key], expected, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], expected, rtol=tol, atol=tol, err_msg=key)


def test_sgd_float32_is_bit_identical_to_the_reference(monkeypatch):
    """Scalars cast to the data's type: the one-pass SGD rounds exactly as the five
    reference numpy passes do (resume stays bit-exact whichever path saved the state)."""
    build = _update_case("SGD", "L2")
    want, _ = _run(build, np.float32, monkeypatch, jit=False)
    got, _ = _run(build, np.float32, monkeypatch, jit=True)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_out_of_range_label_raises_the_reference_error(monkeypatch):
    monkeypatch.delenv("NETFORGE_NO_JIT", raising=False)
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"label 3 is outside \[0, 3\)"):
        loss.softmax_loss_forward(x, np.array([0.0, 3.0]), np.zeros_like(x))
    with pytest.raises(ValueError, match=r"label -1 is outside"):
        loss.softmax_loss_backward(x, np.array([-1.0, 0.0]), np.zeros_like(x))


def test_strided_arrays_take_the_reference_path(monkeypatch):
    monkeypatch.delenv("NETFORGE_NO_JIT", raising=False)
    x = np.arange(24.0).reshape(2, 3, 4)
    assert compiled.active(x, None)
    assert not compiled.active(x[:, :, ::2])
    assert not compiled.active(x.tolist())
    monkeypatch.setenv("NETFORGE_NO_JIT", "1")
    assert not compiled.active(x)
