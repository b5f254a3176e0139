"""LSTM, RNN and LSTMUnit layers: forward against naive per-step loops (Caffe's unrolled
nets written out in plain numpy), float64 gradient checks through the layer's backward,
Caffe's parameter blob order and shapes, the state carried between batches, and errors."""

from __future__ import annotations

import numpy as np
import pytest

import netforge
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, GraphError, ShapeError
from netforge.inspect.gradient_check import build_single_layer, check_gradients, run_forward
from tests.layers.inputs import TableInputs
from tests.ops.test_recurrent import naive_lstm, naive_lstm_unit, naive_rnn

RNG = np.random.default_rng(1701)
_INPUTS = TableInputs(RNG)
normal = _INPUTS.normal
T, N, D, H, DS = 3, 2, 3, 4, 2
FILLERS = 'weight_filler { type: "gaussian" std: 0.6 } bias_filler { type: "gaussian" std: 0.5 }'


def layer_text(kind, *, static=False, expose=False, num_output=H):
    bottoms = ["b0", "b1"] + (["b2"] if static else [])
    states = ["h", "c"] if kind == "LSTM" else ["h"]
    first = len(bottoms)
    if expose:
        bottoms += [f"b{first + k}" for k in range(len(states))]
    tops = ["out"] + ([f"{s}_T" for s in states] if expose else [])
    return (f'name: "rec" type: "{kind}" '
            + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops)
            + f" recurrent_param {{ num_output: {num_output} {FILLERS} "
            + f"expose_hidden: {'true' if expose else 'false'} }}")


def reference(kind, bottoms, params, *, static, expose):
    """The layer's tops by the naive loops, from its bottoms and parameter blobs (taken in
    Caffe's order: W_x, b, [W_static], W_h, [W_o, b_o])."""
    x, cont = bottoms[0], bottoms[1]
    x_static = bottoms[2] if static else None
    w_x, b = params[0], params[1]
    w_static = params[2] if static else None
    rest = params[3:] if static else params[2:]
    states = bottoms[(3 if static else 2):]
    zeros = np.zeros((N, H))
    if kind == "LSTM":
        h0, c0 = (s.reshape(N, H) for s in states) if expose else (zeros, zeros)
        h, h_last, c_last = naive_lstm(x, cont, w_x, b, rest[0], h0, c0, x_static, w_static)
        return [h, h_last, c_last] if expose else [h]
    h0 = states[0].reshape(N, H) if expose else zeros
    o, h_last = naive_rnn(x, cont, w_x, b, rest[0], rest[1], rest[2], h0, x_static, w_static)
    return [o, h_last] if expose else [o]


# Without expose_hidden every stream starts a sequence at t = 0 (cont 0), so the state
# carried over from the previous forward cannot matter; stream 1 also resets at t = 1.
CONT_FRESH = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
# With exposed initial states, stream 0 continues from h_0/c_0 and resets at t = 2.
CONT_EXPOSED = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])

# id, type, static input, expose_hidden, x shape (trailing axes are flattened, as Caffe's
# InnerProduct with axis 2 does).
CASES = [
    ("lstm", "LSTM", False, False, (T, N, D)),
    ("lstm_static", "LSTM", True, False, (T, N, D)),
    ("lstm_expose", "LSTM", False, True, (T, N, D)),
    ("lstm_static_expose_4d_x", "LSTM", True, True, (T, N, 1, D)),
    ("rnn", "RNN", False, False, (T, N, D)),
    ("rnn_static", "RNN", True, False, (T, N, D)),
    ("rnn_expose", "RNN", False, True, (T, N, D)),
    ("rnn_static_expose_4d_x", "RNN", True, True, (T, N, D, 1)),
]


def make_bottoms(kind, static, expose, x_shape):
    bottoms = [normal(*x_shape), CONT_EXPOSED if expose else CONT_FRESH]
    if static:
        bottoms.append(normal(N, DS))
    if expose:
        bottoms += [normal(1, N, H) for _ in range(2 if kind == "LSTM" else 1)]
    return bottoms


@pytest.mark.parametrize("kind, static, expose, x_shape", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_recurrent_forward_and_gradient(kind, static, expose, x_shape):
    bottoms = make_bottoms(kind, static, expose, x_shape)
    plan, step = build_single_layer(layer_text(kind, static=static, expose=expose), bottoms)
    run_forward(plan)
    params = [blob.data for blob in step.layer.blobs]
    expected = reference(kind, bottoms, params, static=static, expose=expose)
    assert len(expected) == len(step.tops)
    for top, want in zip(step.tops, expected, strict=True):
        np.testing.assert_allclose(top.data, want.reshape(top.shape), rtol=1e-10, atol=1e-12)
    mismatches = check_gradients(plan, step)
    assert not mismatches, mismatches[:5]


def test_exposed_initial_state_gets_gradient_only_where_cont_keeps_it():
    bottoms = make_bottoms("LSTM", False, True, (T, N, D))
    plan, step = build_single_layer(layer_text("LSTM", expose=True), bottoms)
    run_forward(plan)
    for top in step.tops:
        top.diff[...] = normal(*top.shape)
    step.layer.backward(step.tops, [True, False, True, True], step.bottoms)
    for state in step.bottoms[2:]:  # h_0, c_0: stream 1 starts over at t = 0 (cont 0)
        assert np.abs(state.diff[0, 0]).min() > 0
        assert not state.diff[0, 1].any()


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_over_between_forwards_without_expose_hidden(kind):
    """Caffe copies the last forward's h_T (and c_T) into h_0 (c_0): cont 1 at t = 0
    continues the sequences of the previous batch."""
    x1, x2 = normal(T, N, D), normal(T, N, D)
    cont_continue = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    plan, step = build_single_layer(layer_text(kind), [x1, CONT_FRESH])
    run_forward(plan)
    first = step.tops[0].data.copy()
    params = [blob.data for blob in step.layer.blobs]
    state = reference(kind, [x1, CONT_FRESH, *(np.zeros((1, N, H)),) * (1 + (kind == "LSTM"))],
                      params, static=False, expose=True)[1:]
    np.testing.assert_allclose(first, reference(kind, [x1, CONT_FRESH], params, static=False,
                                                expose=False)[0], rtol=1e-10, atol=1e-12)

    plan.blobs["b0"].data[...] = x2
    plan.blobs["b1"].data[...] = cont_continue
    step.layer.forward(step.bottoms, step.tops)
    carried = [s.reshape(1, N, H) for s in state]
    want = reference(kind, [x2, cont_continue, *carried], params, static=False, expose=True)[0]
    np.testing.assert_allclose(step.tops[0].data, want, rtol=1e-10, atol=1e-12)
    # Stream 1 started over (cont 0 at t = 0): the carry made no difference there.
    fresh = reference(kind, [x2, cont_continue], params, static=False, expose=False)[0]
    np.testing.assert_allclose(step.tops[0].data[:, 1], fresh[:, 1], rtol=1e-10, atol=1e-12)
    assert not np.allclose(step.tops[0].data[:, 0], fresh[:, 0])


# --------------------------------------------------------------------------- parameters

# Caffe's blob order (the order in which the unrolled net meets each param, which is how
# a .caffemodel stores them) and shapes; "b" marks a blob filled by bias_filler.
LAYOUTS = [
    ("LSTM", False, [("w", (4 * H, D)), ("b", (4 * H,)), ("w", (4 * H, H))]),
    ("LSTM", True, [("w", (4 * H, D)), ("b", (4 * H,)), ("w", (4 * H, DS)), ("w", (4 * H, H))]),
    ("RNN", False, [("w", (H, D)), ("b", (H,)), ("w", (H, H)), ("w", (H, H)), ("b", (H,))]),
    ("RNN", True, [("w", (H, D)), ("b", (H,)), ("w", (H, DS)), ("w", (H, H)), ("w", (H, H)),
                   ("b", (H,))]),
]


@pytest.mark.parametrize("kind, static, layout", LAYOUTS,
                         ids=["lstm", "lstm_static", "rnn", "rnn_static"])
def test_parameter_blobs_in_caffe_order(kind, static, layout):
    text = layer_text(kind, static=static).replace(
        FILLERS, 'weight_filler { type: "constant" value: 0.25 } '
                 'bias_filler { type: "constant" value: -1 }')
    plan, step = build_single_layer(text, make_bottoms(kind, static, False, (T, N, D)))
    blobs = step.layer.blobs
    assert [blob.shape for blob in blobs] == [shape for _, shape in layout]
    for blob, (role, _) in zip(blobs, layout, strict=True):
        assert np.all(blob.data == (-1.0 if role == "b" else 0.25))


def test_lstm_loads_caffe_ordered_weights_from_a_caffemodel(tmp_path):
    """A .caffemodel with W_xc, b_c, W_xc_static, W_hc (Caffe's order) drives the forward."""
    (tmp_path / "net.prototxt").write_text(
        'name: "seq"\n'
        f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: {T} '
        f'dim: {N} dim: {D} }} }} }}\n'
        f'layer {{ name: "cont" type: "Input" top: "cont" input_param {{ shape {{ dim: {T} '
        f'dim: {N} }} }} }}\n'
        f'layer {{ name: "xs" type: "Input" top: "xs" input_param {{ shape {{ dim: {N} '
        f'dim: {DS} }} }} }}\n'
        'layer { name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" bottom: "xs" '
        f'top: "h" recurrent_param {{ num_output: {H} }} }}\n')
    # float32-exact values, so the float64 net sees exactly what the file holds
    weights = [normal(4 * H, D), normal(4 * H), normal(4 * H, DS), normal(4 * H, H)]
    weights = [w.astype(np.float32).astype(np.float64) * 0.5 for w in weights]
    model = pb.NetParameter(name="seq")
    layer = model.layer.add(name="lstm1", type="LSTM")
    for w in weights:
        blob = layer.blobs.add()
        blob.shape.dim.extend(w.shape)
        blob.data.extend(w.ravel())
    (tmp_path / "w.caffemodel").write_bytes(model.SerializeToString())

    net = netforge.Net(str(tmp_path / "net.prototxt"), weights=str(tmp_path / "w.caffemodel"),
                       dtype=np.float64)
    x, xs = normal(T, N, D), normal(N, DS)
    out = net.forward(x=x, cont=CONT_FRESH, xs=xs)["h"]
    want, _, _ = naive_lstm(x, CONT_FRESH, weights[0], weights[1], weights[3],
                            np.zeros((N, H)), np.zeros((N, H)), xs, weights[2])
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- LSTMUnit

LSTM_UNIT = 'name: "unit" type: "LSTMUnit" bottom: "b0" bottom: "b1" bottom: "b2" ' \
            'top: "c" top: "h"'


def test_lstm_unit_forward_and_gradient():
    n, hidden = 3, 2
    c_prev, gates = normal(1, n, hidden), 1.5 * normal(1, n, 4 * hidden)
    cont = np.array([[1.0, 0.0, 1.0]])
    plan, step = build_single_layer(LSTM_UNIT, [c_prev, gates, cont])
    run_forward(plan)
    want_c, want_h = naive_lstm_unit(c_prev[0], gates[0], cont[0])
    np.testing.assert_allclose(step.tops[0].data[0], want_c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(step.tops[1].data[0], want_h, rtol=1e-12, atol=1e-14)
    assert step.tops[0].shape == step.tops[1].shape == (1, n, hidden)
    mismatches = check_gradients(plan, step)
    assert not mismatches, mismatches[:5]
    assert not step.bottoms[0].diff[0, 1].any(), "a reset stream passes no gradient to c_prev"


# --------------------------------------------------------------------------- errors

ERRORS = [
    ("num_output_zero", layer_text("LSTM", num_output=0), [normal(T, N, D), CONT_FRESH],
     ConfigError, "num_output must be positive"),
    ("x_2d", layer_text("RNN"), [normal(T, N), CONT_FRESH], ShapeError, "at least 3 axes"),
    ("cont_shape", layer_text("LSTM"), [normal(T, N, D), np.ones((T, N + 1))], ShapeError,
     "expected (T, N)"),
    ("static_batch", layer_text("RNN", static=True),
     [normal(T, N, D), CONT_FRESH, normal(N + 1, DS)], ShapeError, "static input"),
    ("h0_shape", layer_text("RNN", expose=True),
     [normal(T, N, D), CONT_EXPOSED, normal(N, H)], ShapeError, "initial state h_0"),
    ("c0_shape", layer_text("LSTM", expose=True),
     [normal(T, N, D), CONT_EXPOSED, normal(1, N, H), normal(1, N, H + 1)], ShapeError,
     "initial state c_0"),
    ("expose_missing_c0", layer_text("LSTM", expose=True).replace(' bottom: "b3"', ""),
     [normal(T, N, D), CONT_EXPOSED, normal(1, N, H)], GraphError, "at least 4 bottom"),
    ("expose_missing_tops", layer_text("RNN", expose=True).replace(' top: "h_T"', ""),
     [normal(T, N, D), CONT_EXPOSED, normal(1, N, H)], GraphError, "takes 2 top"),
    ("unit_gates", LSTM_UNIT, [normal(1, 2, 3), normal(1, 2, 8), np.ones((1, 2))], ShapeError,
     "expected (1, N, 4H)"),
    ("unit_cont", LSTM_UNIT, [normal(1, 2, 3), normal(1, 2, 12), np.ones((2, 1))], ShapeError,
     "cont"),
]


@pytest.mark.parametrize("text, bottoms, error, words", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_bad_configuration_names_the_layer(text, bottoms, error, words):
    with pytest.raises(error) as info:
        build_single_layer(text, bottoms)
    message = str(info.value)
    assert words in message
    assert '"rec"' in message or '"unit"' in message


def test_debug_info_logs_caffe_style_lines(caplog):
    text = layer_text("RNN").replace("expose_hidden: false", "expose_hidden: false "
                                     "debug_info: true")
    plan, step = build_single_layer(text, [normal(T, N, D), CONT_FRESH])
    with caplog.at_level("INFO", logger="netforge"):
        run_forward(plan)
        for top in step.tops:
            top.diff[...] = 1.0
        step.layer.backward(step.tops, [True, False], step.bottoms)
    assert "[Forward] Layer rec, top blob out data:" in caplog.text
    assert "[Backward] Layer rec, param blob W_hh diff:" in caplog.text
