"""Structure layers, table-driven: forward against plain-numpy references written here, then a
float64 central-difference gradient check through the layer's backward."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.errors import ConfigError, DataError, GraphError, ShapeError
from netforge.inspect.gradient_check import build_single_layer, check_gradients, run_forward
from tests.backends import ARRAY_MODULES, host, load
from tests.layers.inputs import TableInputs

RNG = np.random.default_rng(1701)
_INPUTS = TableInputs(RNG)
normal, distinct = _INPUTS.normal, _INPUTS.distinct


def layer(kind, bottoms, tops, params=""):
    text = f'name: "l" type: "{kind}" '
    text += " ".join(f'bottom: "b{j}"' for j in range(bottoms)) + " "
    text += " ".join(f'top: "{t}"' for t in tops) + " " + params
    return text


# -- references (loops and plain numpy; nothing from netforge) ---------------------------------


def ref_slice(x, axis, points):
    bounds = [0, *points, x.shape[axis]]
    return [np.take(x, range(a, b), axis=axis) for a, b in zip(bounds, bounds[1:], strict=False)]


def ref_reduction(x, axis, op, coeff=1.0):
    n = int(np.prod(x.shape[:axis]))
    rows = x.reshape(n, -1)
    out = np.zeros(n)
    for i in range(n):
        row = rows[i]
        out[i] = {"SUM": sum(row), "ASUM": sum(abs(v) for v in row),
                  "SUMSQ": sum(v * v for v in row), "MEAN": sum(row) / len(row)}[op]
    return (coeff * out).reshape(x.shape[:axis])


def ref_argmax(x, top_k, axis=None, out_max_val=False):
    """Caffe's ArgMax: descending by (value, index), so ties go to the larger index."""
    if axis is None:
        rows = x.reshape(x.shape[0], -1)
        shape = [1] * max(x.ndim, 3)
        shape[0], shape[1], shape[2] = x.shape[0], 2 if out_max_val else 1, top_k
        y = np.zeros((x.shape[0], shape[1], top_k))
        for n, row in enumerate(rows):
            ranked = sorted(((v, j) for j, v in enumerate(row)), reverse=True)[:top_k]
            y[n, 0] = [j for _, j in ranked]
            if out_max_val:
                y[n, 1] = [v for v, _ in ranked]
        return y.reshape(shape)
    moved = np.moveaxis(x, axis, -1)
    y = np.zeros((*moved.shape[:-1], top_k))
    for idx in np.ndindex(moved.shape[:-1]):
        ranked = sorted(((v, j) for j, v in enumerate(moved[idx])), reverse=True)[:top_k]
        y[idx] = [v if out_max_val else j for v, j in ranked]
    return np.moveaxis(y, -1, axis)


def ref_tile(x, axis, tiles):
    outer = int(np.prod(x.shape[:axis]))
    block = x.reshape(outer, -1)
    out = np.concatenate([block] * tiles, axis=1)
    return out.reshape(*x.shape[:axis], x.shape[axis] * tiles, *x.shape[axis + 1:])


def ref_embed(index, w, b=None):
    out = np.zeros((*index.shape, w.shape[1]))
    for idx in np.ndindex(index.shape):
        out[idx] = w[int(index[idx])] + (0 if b is None else b)
    return out


def params_of(step):
    return [host(blob.data) for blob in step.layer.blobs]


X3 = normal(2, 6, 3)
INDEX = np.array([[0.0, 3.0, 1.0], [3.0, 3.0, 2.0]])  # repeats: gradients accumulate
EMBED = ('embed_param { num_output: 3 input_dim: 4 weight_filler { type: "gaussian" } '
         'bias_filler { type: "gaussian" } }')

# id, layer text, bottoms, reference(bottoms, params) -> tops, gradient options (None: none)
ROWS = [
    ("slice_axis1_points", layer("Slice", 1, ["t0", "t1", "t2"],
                                 "slice_param { axis: 1 slice_point: 1 slice_point: 4 }"),
     [X3], lambda b, p: ref_slice(b[0], 1, [1, 4]), {}),
    ("slice_axis1_equal", layer("Slice", 1, ["t0", "t1", "t2"]),
     [X3], lambda b, p: ref_slice(b[0], 1, [2, 4]), {}),
    ("slice_axis0_points", layer("Slice", 1, ["t0", "t1"],
                                 "slice_param { axis: 0 slice_point: 1 }"),
     [normal(3, 2, 2)], lambda b, p: ref_slice(b[0], 0, [1]), {}),
    ("slice_axis0_equal", layer("Slice", 1, ["t0", "t1"], "slice_param { axis: 0 }"),
     [normal(4, 3)], lambda b, p: ref_slice(b[0], 0, [2]), {}),
    ("slice_negative_axis", layer("Slice", 1, ["t0", "t1"],
                                  "slice_param { axis: -1 slice_point: 2 }"),
     [X3], lambda b, p: ref_slice(b[0], 2, [2]), {}),
    ("slice_legacy_slice_dim", layer("Slice", 1, ["t0", "t1"], "slice_param { slice_dim: 2 }"),
     [normal(2, 3, 4)], lambda b, p: ref_slice(b[0], 2, [2]), {}),
    ("slice_one_top_shares", layer("Slice", 1, ["t0"]),
     [X3], lambda b, p: [b[0]], {}),
    ("reshape_copy_and_infer", layer("Reshape", 1, ["t"],
                                     "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"),
     [X3], lambda b, p: [b[0].reshape(2, 9, 2)], {}),
    ("reshape_flatten_all", layer("Reshape", 1, ["t"], "reshape_param { shape { dim: -1 } }"),
     [X3], lambda b, p: [b[0].reshape(-1)], {}),
    ("reshape_axis_num_axes", layer("Reshape", 1, ["t"], "reshape_param { axis: 1 num_axes: 1 "
                                    "shape { dim: 2 dim: 3 } }"),
     [X3], lambda b, p: [b[0].reshape(2, 2, 3, 3)], {}),
    ("reshape_insert_axis", layer("Reshape", 1, ["t"], "reshape_param { axis: 1 num_axes: 0 "
                                  "shape { dim: 1 } }"),
     [X3], lambda b, p: [b[0].reshape(2, 1, 6, 3)], {}),
    ("reshape_negative_axis", layer("Reshape", 1, ["t"], "reshape_param { axis: -1 num_axes: 0 "
                                    "shape { dim: 1 dim: 1 } }"),
     [X3], lambda b, p: [b[0].reshape(2, 6, 3, 1, 1)], {}),
    ("reshape_copy_in_range", layer("Reshape", 1, ["t"], "reshape_param { axis: 1 "
                                    "shape { dim: 0 dim: 3 } }"),
     [X3], lambda b, p: [b[0].reshape(2, 6, 3)], {}),
    *[(f"reduction_{op.lower()}_axis{axis}_coeff{coeff}",
       layer("Reduction", 1, ["t"],
             f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}"),
       [distinct(2, 3, 2)], lambda b, p, op=op, axis=axis, coeff=coeff:
       [ref_reduction(b[0], axis, op, float(np.float32(coeff)))],
       {"kink": 0.0, "kink_range": 1e-3})
      for op, axis, coeff in [("SUM", 0, 1), ("SUM", 1, -0.5), ("ASUM", 1, 1), ("ASUM", 0, 2),
                              ("SUMSQ", 2, 1), ("SUMSQ", -1, 0.3), ("MEAN", 1, 1),
                              ("MEAN", 0, 3)]],
    ("argmax_default", layer("ArgMax", 1, ["t"]),
     [distinct(3, 5)], lambda b, p: [ref_argmax(b[0], 1)], None),
    ("argmax_top3_max_val", layer("ArgMax", 1, ["t"], "argmax_param { top_k: 3 "
                                  "out_max_val: true }"),
     [distinct(2, 2, 3)], lambda b, p: [ref_argmax(b[0], 3, None, True)], None),
    ("argmax_4d_flattened", layer("ArgMax", 1, ["t"], "argmax_param { top_k: 2 }"),
     [distinct(2, 3, 2, 2)], lambda b, p: [ref_argmax(b[0], 2)], None),
    ("argmax_axis1_top2", layer("ArgMax", 1, ["t"], "argmax_param { axis: 1 top_k: 2 }"),
     [distinct(2, 4, 3)], lambda b, p: [ref_argmax(b[0], 2, 1)], None),
    ("argmax_axis2_values", layer("ArgMax", 1, ["t"], "argmax_param { axis: -1 top_k: 2 "
                                  "out_max_val: true }"),
     [distinct(2, 3, 4)], lambda b, p: [ref_argmax(b[0], 2, 2, True)], None),
    ("argmax_ties_larger_index", layer("ArgMax", 1, ["t"], "argmax_param { top_k: 2 }"),
     [np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])],
     lambda b, p: [np.array([[[2.0, 1.0]], [[3.0, 2.0]]])], None),
    ("tile_axis1", layer("Tile", 1, ["t"], "tile_param { axis: 1 tiles: 3 }"),
     [normal(2, 2, 3)], lambda b, p: [ref_tile(b[0], 1, 3)], {}),
    ("tile_axis0", layer("Tile", 1, ["t"], "tile_param { axis: 0 tiles: 2 }"),
     [normal(2, 3)], lambda b, p: [np.concatenate([b[0], b[0]])], {}),
    ("tile_last_axis", layer("Tile", 1, ["t"], "tile_param { axis: -1 tiles: 2 }"),
     [normal(2, 3)], lambda b, p: [np.tile(b[0], (1, 2))], {}),
    ("filter_two_bottoms", layer("Filter", 3, ["t0", "t1"]),
     [normal(5, 2, 2), normal(5, 3), np.array([1.0, 0.0, 1.0, 1.0, 0.0])],
     lambda b, p: [b[0][[0, 2, 3]], b[1][[0, 2, 3]]], {}),
    ("filter_selector_n111", layer("Filter", 2, ["t0"]),
     [normal(4, 3), np.array([0.0, 2.0, 0.0, -1.0]).reshape(4, 1, 1, 1)],
     lambda b, p: [b[0][[1, 3]]], {}),
    ("batch_reindex_repeats", layer("BatchReindex", 2, ["t"]),
     [normal(3, 2, 2), np.array([2.0, 0.0, 2.0, 2.0, 1.0])],
     lambda b, p: [b[0][[2, 0, 2, 2, 1]]], {}),
    ("parameter", layer("Parameter", 0, ["t"], "parameter_param { shape { dim: 2 dim: 3 } }"),
     [], lambda b, p: [p[0]], {}),
    ("embed", layer("Embed", 1, ["t"], EMBED),
     [INDEX], lambda b, p: [ref_embed(b[0], p[0], p[1])], {}),
    ("embed_no_bias_1d", layer("Embed", 1, ["t"], 'embed_param { num_output: 2 input_dim: 3 '
                               'bias_term: false weight_filler { type: "gaussian" } }'),
     [np.array([2.0, 2.0, 0.0])], lambda b, p: [ref_embed(b[0], p[0])], {}),
]


@pytest.mark.parametrize("xp_name", ARRAY_MODULES)
@pytest.mark.parametrize("text, bottoms, reference, grad",
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_layer_forward_and_gradient(text, bottoms, reference, grad, xp_name):
    xp = load(xp_name)
    plan, step = build_single_layer(text, bottoms, xp=xp)
    for blob in step.layer.blobs:  # give zero-initialised params (Parameter) real values
        if not blob.data.any():
            blob.data[...] = xp.asarray(RNG.standard_normal(blob.shape))
    run_forward(plan)
    expected = reference(bottoms, params_of(step))
    assert len(expected) == len(step.tops)
    for top, want in zip(step.tops, expected, strict=True):
        want = np.asarray(want, dtype=np.float64)
        assert top.shape == want.shape
        np.testing.assert_allclose(host(top.data), want, rtol=1e-12, atol=1e-12)
    if grad is None or xp is not np:  # gradients: float64 differences on the host
        return
    mismatches = check_gradients(plan, step, **grad)
    assert not mismatches, mismatches[:5]


def test_reshape_and_one_top_slice_share_memory_with_the_bottom():
    for text in (layer("Reshape", 1, ["t"], "reshape_param { shape { dim: -1 } }"),
                 layer("Slice", 1, ["t"])):
        plan, step = build_single_layer(text, [normal(2, 3)])
        top, bottom = step.tops[0], step.bottoms[0]
        assert np.shares_memory(top.data, bottom.data)
        assert np.shares_memory(top.diff, bottom.diff)


def test_filter_keeps_all_rows_until_forward_and_zero_fills_dropped_gradients():
    x = normal(4, 3)
    plan, step = build_single_layer(layer("Filter", 2, ["t"]), [x, np.array([0, 1, 0, 0.0])])
    assert step.tops[0].shape == (4, 3)  # Caffe's first reshape: the whole batch
    run_forward(plan)
    assert step.tops[0].shape == (1, 3)
    step.bottoms[0].diff[...] = np.nan
    step.tops[0].diff[...] = 7.0
    step.layer.backward(step.tops, [True, False], step.bottoms)
    np.testing.assert_array_equal(step.bottoms[0].diff, [[0] * 3, [7] * 3, [0] * 3, [0] * 3])
    assert step.layer.no_gradient_bottoms == (1,)


def test_silence_has_no_tops_and_backward_writes_zeros():
    plan, step = build_single_layer(layer("Silence", 2, []), [normal(2, 3), normal(4)])
    assert step.tops == [] and plan.outputs == []
    run_forward(plan)
    for bottom in step.bottoms:
        bottom.diff[...] = np.nan
    step.layer.backward([], [True, False], step.bottoms)
    np.testing.assert_array_equal(step.bottoms[0].diff, 0.0)
    assert np.isnan(step.bottoms[1].diff).all()


def test_parameter_is_learnable_zero_initialised_and_accumulates():
    plan, step = build_single_layer(layer("Parameter", 0, ["t"],
                                          "parameter_param { shape { dim: 3 } }"), [])
    assert [p.blob for p in plan.learnable] == step.layer.blobs
    np.testing.assert_array_equal(step.layer.blobs[0].data, 0.0)
    step.tops[0].diff[...] = [1.0, 2.0, 3.0]
    step.layer.backward(step.tops, [], [])
    step.layer.backward(step.tops, [], [])
    np.testing.assert_array_equal(step.layer.blobs[0].diff, [2.0, 4.0, 6.0])


def test_embed_gradient_accumulates_over_repeated_indices():
    plan, step = build_single_layer(layer("Embed", 1, ["t"], EMBED), [INDEX])
    run_forward(plan)
    dy = normal(*step.tops[0].shape)
    step.tops[0].diff[...] = dy
    for blob in step.layer.blobs:
        blob.diff[...] = 0
    step.layer.backward(step.tops, [False], step.bottoms)
    want = np.zeros((4, 3))
    for idx in np.ndindex(INDEX.shape):
        want[int(INDEX[idx])] += dy[idx]
    np.testing.assert_allclose(step.layer.blobs[0].diff, want, rtol=1e-12)
    np.testing.assert_allclose(step.layer.blobs[1].diff, dy.reshape(-1, 3).sum(0), rtol=1e-12)


@pytest.mark.parametrize("text, bottoms, error, match", [
    (layer("Slice", 1, ["a", "b"], "slice_param { slice_point: 1 slice_point: 2 }"),
     [normal(2, 3)], ShapeError, "2 slice_point value"),
    (layer("Slice", 1, ["a", "b"], "slice_param { slice_point: 3 }"),
     [normal(2, 3)], ShapeError, "increase strictly"),
    (layer("Slice", 1, ["a", "b"]), [normal(2, 3)], ShapeError, "evenly divide"),
    (layer("Slice", 1, ["a", "b"], "slice_param { axis: 1 slice_dim: 1 }"),
     [normal(2, 4)], ConfigError, "not both"),
    (layer("Reshape", 1, ["t"], "reshape_param { shape { dim: -1 dim: -1 } }"),
     [normal(2, 3)], ShapeError, "more than one -1"),
    (layer("Reshape", 1, ["t"], "reshape_param { shape { dim: 4 dim: -1 } }"),
     [normal(2, 3)], ShapeError, "not divisible"),
    (layer("Reshape", 1, ["t"], "reshape_param { shape { dim: 5 } }"),
     [normal(2, 3)], ShapeError, "holds 5 values"),
    (layer("Reshape", 1, ["t"], "reshape_param { shape { dim: 0 dim: 0 dim: 0 } }"),
     [normal(2, 3)], ShapeError, "no axis 2 to copy"),
    (layer("ArgMax", 1, ["t"], "argmax_param { axis: 1 top_k: 4 }"),
     [normal(2, 3)], ShapeError, "top_k"),
    (layer("Tile", 1, ["t"]), [normal(2, 3)], ConfigError, "needs tiles"),
    (layer("Tile", 1, ["t"], "tile_param { tiles: 0 }"), [normal(2, 3)], ConfigError,
     "positive"),
    (layer("Filter", 2, ["a", "b"]), [normal(2, 3), np.ones(2)], GraphError, "one top per"),
    (layer("Filter", 2, ["a"]), [normal(2, 3), np.ones((2, 2))], ShapeError, "selector"),
    (layer("Filter", 2, ["a"]), [normal(2, 3), np.ones(3)], ShapeError, "first axes"),
    (layer("BatchReindex", 2, ["t"]), [normal(2, 3), np.ones((2, 1))], ShapeError, "1-D"),
    (layer("Embed", 1, ["t"], "embed_param { num_output: 2 }"), [INDEX], ConfigError,
     "input_dim"),
])
def test_bad_configurations_name_the_layer(text, bottoms, error, match):
    with pytest.raises(error, match=match) as info:
        build_single_layer(text, bottoms)
    assert '"l"' in str(info.value)


@pytest.mark.parametrize("text, bottoms, match", [
    (layer("BatchReindex", 2, ["t"]), [normal(2, 3), np.array([0.0, 2.0])],
     "index 2 is outside"),
    (layer("Embed", 1, ["t"], EMBED), [np.array([0.0, 4.0])], "index 4 is outside"),
    (layer("Embed", 1, ["t"], EMBED), [np.array([0.5, 1.0])], "whole numbers"),
])
def test_bad_index_data_is_a_data_error(text, bottoms, match):
    plan, _ = build_single_layer(text, bottoms)
    with pytest.raises(DataError, match=match):
        run_forward(plan)
