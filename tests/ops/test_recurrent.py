"""LSTM, RNN and LSTMUnit kernels against naive per-step, per-sample loops (Caffe's
formulas written out in plain numpy), plus float64 central-difference gradient checks."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops.recurrent import (
    lstm_backward,
    lstm_forward,
    lstm_unit_backward,
    lstm_unit_forward,
    lstm_unit_workspace_shapes,
    lstm_workspace_shapes,
    rnn_backward,
    rnn_forward,
    rnn_workspace_shapes,
)
from netforge.ops.xp import allocate
from tests.ops.alloc import assert_batch_independent
from tests.ops.gradcheck import assert_gradient, top_weights

# --------------------------------------------------------------------------- references
# Independent of netforge; the layer tests use them too.


def naive_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def naive_lstm_unit(c_prev, gates, cont):
    """Caffe's LSTMUnit, one element at a time: gate blocks i, f, o, g of width H;
    f = cont·sigmoid(f'); c = f·c_prev + i·g; h = o·tanh(c)."""
    n, hidden = c_prev.shape
    c, h = np.empty((n, hidden)), np.empty((n, hidden))
    for s in range(n):
        for d in range(hidden):
            i = naive_sigmoid(gates[s, d])
            f = cont[s] * naive_sigmoid(gates[s, hidden + d])
            o = naive_sigmoid(gates[s, 2 * hidden + d])
            g = np.tanh(gates[s, 3 * hidden + d])
            c[s, d] = f * c_prev[s, d] + i * g
            h[s, d] = o * np.tanh(c[s, d])
    return c, h


def naive_lstm(x, cont, w_x, b, w_h, h0, c0, x_static=None, w_static=None):
    """Caffe's unrolled LSTM net, one step and one stream at a time.
    Returns (h for every step (T, N, H), h_T (N, H), c_T (N, H))."""
    steps, n = cont.shape
    h, c = np.array(h0, dtype=np.float64), np.array(c0, dtype=np.float64)
    out = np.zeros((steps, n, h.shape[1]))
    for t in range(steps):
        for s in range(n):
            gates = w_x @ x[t, s].ravel() + b + w_h @ (cont[t, s] * h[s])
            if x_static is not None:
                gates = gates + w_static @ x_static[s].ravel()
            c_new, h_new = naive_lstm_unit(c[s][None], gates[None], [cont[t, s]])
            c[s], h[s] = c_new[0], h_new[0]
            out[t, s] = h[s]
    return out, h, c


def naive_rnn(x, cont, w_x, b, w_h, w_o, b_o, h0, x_static=None, w_static=None):
    """Caffe's unrolled RNN net, one step and one stream at a time.
    Returns (o for every step (T, N, H), h_T (N, H))."""
    steps, n = cont.shape
    h = np.array(h0, dtype=np.float64)
    out = np.zeros((steps, n, h.shape[1]))
    for t in range(steps):
        for s in range(n):
            pre = w_x @ x[t, s].ravel() + b + w_h @ (cont[t, s] * h[s])
            if x_static is not None:
                pre = pre + w_static @ x_static[s].ravel()
            h[s] = np.tanh(pre)
            out[t, s] = np.tanh(w_o @ h[s] + b_o)
    return out, h


# --------------------------------------------------------------------------- helpers

T, N, D, H, DS = 3, 2, 3, 4, 2
# Resets (0) at t = 0 for stream 1 and at t = 2 for stream 0; the initial state reaches
# stream 0 only.
CONT = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def _rand(shape, seed, scale=0.7):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# --------------------------------------------------------------------------- LSTM unit


@pytest.mark.parametrize("cont", [[1.0, 0.0, 1.0], [0.5, 1.0, 0.0]], ids=["binary", "fraction"])
def test_lstm_unit_forward_and_gradcheck(cont):
    n, hidden = 3, 2
    cont = np.array(cont)
    c_prev, gates = _rand((n, hidden), 0, 1.0), _rand((n, 4 * hidden), 1, 1.5)
    ws = allocate(lstm_unit_workspace_shapes(n, hidden, np.float64))
    c, h = np.empty((n, hidden)), np.empty((n, hidden))
    lstm_unit_forward(c_prev, gates, cont, c, h, ws=ws)
    want_c, want_h = naive_lstm_unit(c_prev, gates, cont)
    np.testing.assert_allclose(c, want_c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, want_h, rtol=1e-12, atol=1e-14)

    dc, dh = top_weights((n, hidden), 2), top_weights((n, hidden), 3)
    dc_prev, dgates = np.full_like(c_prev, np.nan), np.full_like(gates, np.nan)
    lstm_unit_backward(dc, dh, cont, dc_prev=dc_prev, dgates=dgates, ws=ws)

    def forward():
        lstm_unit_forward(c_prev, gates, cont, c, h, ws=ws)
        return np.concatenate([c, h])

    weights = np.concatenate([dc, dh])
    assert_gradient(dc_prev, forward, c_prev, weights, what="dc_prev")
    assert_gradient(dgates, forward, gates, weights, what="dgates")


def test_lstm_unit_backward_one_gradient_only():
    n, hidden = 2, 3
    cont = np.array([1.0, 1.0])
    c_prev, gates = _rand((n, hidden), 4), _rand((n, 4 * hidden), 5)
    ws = allocate(lstm_unit_workspace_shapes(n, hidden, np.float64))
    c, h = np.empty((n, hidden)), np.empty((n, hidden))
    lstm_unit_forward(c_prev, gates, cont, c, h, ws=ws)
    dc, dh = top_weights((n, hidden), 6), top_weights((n, hidden), 7)
    both_c, both_g = np.empty_like(c_prev), np.empty_like(gates)
    lstm_unit_backward(dc, dh, cont, dc_prev=both_c, dgates=both_g, ws=ws)
    only_c, only_g = np.empty_like(c_prev), np.empty_like(gates)
    lstm_unit_backward(dc, dh, cont, dc_prev=only_c, dgates=None, ws=ws)
    lstm_unit_backward(dc, dh, cont, dc_prev=None, dgates=only_g, ws=ws)
    np.testing.assert_array_equal(only_c, both_c)
    np.testing.assert_array_equal(only_g, both_g)


# --------------------------------------------------------------------------- LSTM


def _lstm_case(static: bool):
    x = _rand((T, N, D), 10, 1.0)
    arrays = dict(w_x=_rand((4 * H, D), 11), b=_rand(4 * H, 12), w_h=_rand((4 * H, H), 13),
                  h0=_rand((N, H), 14, 1.0), c0=_rand((N, H), 15, 1.0))
    if static:
        arrays.update(x_static=_rand((N, DS), 16, 1.0), w_static=_rand((4 * H, DS), 17))
    return x, arrays


@pytest.mark.parametrize("static", [False, True], ids=["plain", "static"])
def test_lstm_forward_and_gradcheck(static):
    x, a = _lstm_case(static)
    ws = allocate(lstm_workspace_shapes(T, N, D, H, DS if static else 0, np.float64))
    h = np.empty((T, N, H))
    static_args = dict(x_static=a.get("x_static"), w_static=a.get("w_static"))

    def forward():
        lstm_forward(x, CONT, a["h0"], a["c0"], a["w_x"], a["b"], a["w_h"], h,
                     **static_args, ws=ws)
        # Every step's h, then h_T and c_T as exposed final states.
        return np.concatenate([h.ravel(), h[-1].ravel(), ws["c"][-1].ravel()])

    got = forward()
    want_h, want_h_last, want_c_last = naive_lstm(x, CONT, a["w_x"], a["b"], a["w_h"],
                                                  a["h0"], a["c0"], **static_args)
    np.testing.assert_allclose(h, want_h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h[-1], want_h_last, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ws["c"][-1], want_c_last, rtol=1e-12, atol=1e-14)

    weights = top_weights(got.shape, 20)
    dh = weights[:T * N * H].reshape(T, N, H)
    dh_last = weights[T * N * H:T * N * H + N * H].reshape(N, H)
    dc_last = weights[T * N * H + N * H:].reshape(N, H)
    grads = {name: np.zeros_like(a[name]) for name in ("w_x", "b", "w_h")}
    dx, dh0, dc0 = (np.full_like(v, np.nan) for v in (x, a["h0"], a["c0"]))
    extra = {}
    if static:
        grads["w_static"] = np.zeros_like(a["w_static"])
        extra["dx_static"] = np.full_like(a["x_static"], np.nan)
    lstm_backward(dh, x, CONT, a["w_x"], a["w_h"], **static_args, dh_last=dh_last,
                  dc_last=dc_last, dx=dx, dw_x=grads["w_x"], db=grads["b"], dw_h=grads["w_h"],
                  dw_static=grads.get("w_static"), dh0=dh0, dc0=dc0, **extra, ws=ws)

    assert_gradient(dx, forward, x, weights, what="dx")
    assert_gradient(dh0, forward, a["h0"], weights, what="dh0")
    assert_gradient(dc0, forward, a["c0"], weights, what="dc0")
    assert not dh0[1].any() and not dc0[1].any(), "stream 1 resets at t=0"
    for name, analytic in grads.items():
        assert_gradient(analytic, forward, a[name], weights, what=f"d{name}")
    if static:
        assert_gradient(extra["dx_static"], forward, a["x_static"], weights, what="dx_static")


def test_lstm_param_gradients_accumulate_and_unwanted_ones_are_skipped():
    x, a = _lstm_case(static=False)
    ws = allocate(lstm_workspace_shapes(T, N, D, H, 0, np.float64))
    h = np.empty((T, N, H))
    lstm_forward(x, CONT, a["h0"], a["c0"], a["w_x"], a["b"], a["w_h"], h, ws=ws)
    dh = top_weights(h.shape, 21)
    once = np.zeros_like(a["w_h"])
    dx = np.empty_like(x)
    lstm_backward(dh, x, CONT, a["w_x"], a["w_h"], dx=dx, dw_h=once, ws=ws)
    twice = np.zeros_like(a["w_h"])
    for _ in range(2):
        lstm_backward(dh, x, CONT, a["w_x"], a["w_h"], dw_h=twice, ws=ws)
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-13)
    dx_again = np.full_like(x, np.nan)
    lstm_backward(dh, x, CONT, a["w_x"], a["w_h"], dx=dx_again, ws=ws)
    np.testing.assert_array_equal(dx_again, dx)


# --------------------------------------------------------------------------- RNN


@pytest.mark.parametrize("static", [False, True], ids=["plain", "static"])
def test_rnn_forward_and_gradcheck(static):
    x = _rand((T, N, D), 30, 1.0)
    a = dict(w_x=_rand((H, D), 31), b=_rand(H, 32), w_h=_rand((H, H), 33),
             w_o=_rand((H, H), 34), b_o=_rand(H, 35), h0=_rand((N, H), 36, 1.0))
    static_args = {}
    if static:
        a.update(x_static=_rand((N, DS), 37, 1.0), w_static=_rand((H, DS), 38))
        static_args = dict(x_static=a["x_static"], w_static=a["w_static"])
    ws = allocate(rnn_workspace_shapes(T, N, D, H, DS if static else 0, np.float64))
    o = np.empty((T, N, H))

    def forward():
        rnn_forward(x, CONT, a["h0"], a["w_x"], a["b"], a["w_h"], a["w_o"], a["b_o"], o,
                    **static_args, ws=ws)
        return np.concatenate([o.ravel(), ws["h"][-1].ravel()])  # outputs, then h_T

    got = forward()
    want_o, want_h_last = naive_rnn(x, CONT, a["w_x"], a["b"], a["w_h"], a["w_o"], a["b_o"],
                                    a["h0"], **static_args)
    np.testing.assert_allclose(o, want_o, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ws["h"][-1], want_h_last, rtol=1e-12, atol=1e-14)

    weights = top_weights(got.shape, 40)
    do, dh_last = weights[:T * N * H].reshape(T, N, H), weights[T * N * H:].reshape(N, H)
    names = ["w_x", "b", "w_h", "w_o", "b_o"] + (["w_static"] if static else [])
    grads = {name: np.zeros_like(a[name]) for name in names}
    dx, dh0 = np.full_like(x, np.nan), np.full_like(a["h0"], np.nan)
    extra = {"dx_static": np.full_like(a["x_static"], np.nan)} if static else {}
    rnn_backward(do, x, CONT, a["w_x"], a["w_h"], a["w_o"], **static_args, dh_last=dh_last,
                 dx=dx, dw_x=grads["w_x"], db=grads["b"], dw_h=grads["w_h"],
                 dw_o=grads["w_o"], db_o=grads["b_o"], dw_static=grads.get("w_static"),
                 dh0=dh0, **extra, ws=ws)

    assert_gradient(dx, forward, x, weights, what="dx")
    assert_gradient(dh0, forward, a["h0"], weights, what="dh0")
    assert not dh0[1].any(), "stream 1 resets at t=0"
    for name, analytic in grads.items():
        assert_gradient(analytic, forward, a[name], weights, what=f"d{name}")
    if static:
        assert_gradient(extra["dx_static"], forward, a["x_static"], weights, what="dx_static")


def test_rnn_backward_reads_its_own_copy_of_the_outputs():
    """A layer after the RNN may overwrite the output top in place; backward must not care."""
    x, cont = _rand((T, N, D), 50), np.ones((T, N))
    w = [_rand(s, 51 + k) for k, s in enumerate([(H, D), H, (H, H), (H, H), H])]
    ws = allocate(rnn_workspace_shapes(T, N, D, H, 0, np.float64))
    o = np.empty((T, N, H))
    rnn_forward(x, cont, np.zeros((N, H)), *w, o, ws=ws)
    do = top_weights(o.shape, 52)
    first, second = np.empty_like(x), np.empty_like(x)
    rnn_backward(do, x, cont, w[0], w[2], w[3], dx=first, ws=ws)
    o[...] = 123.0
    rnn_backward(do, x, cont, w[0], w[2], w[3], dx=second, ws=ws)
    np.testing.assert_array_equal(first, second)


# --------------------------------------------------------------------------- hot path


def _alloc_probe_step(kind, n, steps=3, features=8, hidden=128):
    """One forward + backward over a batch of n streams (float32, like training). With
    hidden = 128 a step's (N, H) arrays exceed numpy's 8192-element ufunc buffers (used for
    the gate column blocks and the broadcast cont) at both probe batch sizes."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, cont, state = arr(steps, n, features), np.ones((steps, n), np.float32), arr(n, hidden)
    out, dx = np.empty((steps, n, hidden), np.float32), np.empty_like(x)
    rows = 4 * hidden if kind == "lstm" else hidden
    w_x, b, w_h = arr(rows, features), arr(rows), arr(rows, hidden)
    dw_h = np.zeros_like(w_h)
    if kind == "lstm":
        ws = allocate(lstm_workspace_shapes(steps, n, features, hidden, 0, np.float32))

        def step():
            lstm_forward(x, cont, state, state, w_x, b, w_h, out, ws=ws)
            lstm_backward(out, x, cont, w_x, w_h, dx=dx, dw_h=dw_h, ws=ws)
    else:
        ws = allocate(rnn_workspace_shapes(steps, n, features, hidden, 0, np.float32))
        w_o, b_o, dw_o = arr(hidden, hidden), arr(hidden), np.zeros((hidden, hidden), np.float32)

        def step():
            rnn_forward(x, cont, state, w_x, b, w_h, w_o, b_o, out, ws=ws)
            rnn_backward(out, x, cont, w_x, w_h, w_o, dx=dx, dw_h=dw_h, dw_o=dw_o, ws=ws)
    return step


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_steps_allocate_nothing_that_grows_with_the_batch(kind):
    assert_batch_independent(lambda n: _alloc_probe_step(kind, n))
