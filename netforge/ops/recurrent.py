"""Recurrent kernels (Caffe's LSTM, RNN and LSTMUnit), forward beside backward.

    lstm_unit_workspace_shapes(batch, hidden, dtype) -> spec
    lstm_unit_forward(c_prev, gates, cont, c, h, *, ws)       one step; gates (N, 4H)
    lstm_unit_backward(dc, dh, cont, *, dc_prev, dgates, ws)
    lstm_workspace_shapes(steps, batch, input_dim, hidden, static_dim=0, dtype) -> spec
    lstm_forward(x, cont, h0, c0, w_x, b, w_h, h, *, x_static=None, w_static=None, ws)
    lstm_backward(dh, x, cont, w_x, w_h, *, ..., ws)          BPTT over all T steps
    rnn_workspace_shapes(steps, batch, input_dim, hidden, static_dim=0, dtype) -> spec
    rnn_forward(x, cont, h0, w_x, b, w_h, w_o, b_o, o, *, x_static=None, w_static=None, ws)
    rnn_backward(do, x, cont, w_x, w_h, w_o, *, ..., ws)

Shapes: T time steps, N independent streams, D input features, H = num_output. Time-major:
x (T, N, D), cont (T, N), per-step states (N, H). ``cont[t, n] == 0`` starts a new sequence
in stream n: the previous states are multiplied by cont before step t uses them.

Weights in Caffe's layout (rows = outputs): the LSTM's four gate blocks are stacked in the
order i, f, o, g along the 4H rows of w_x (4H, D), b (4H,), w_h (4H, H), w_static (4H, Ds).

    LSTM step:  [i', f', o', g'] = w_x·x_t + b + w_static·x_static + w_h·(cont_t·h_{t-1})
                i, f, o = sigmoid(i', f', o');  g = tanh(g')
                c_t = f·(cont_t·c_{t-1}) + i·g;  h_t = o·tanh(c_t)
    RNN step:   h_t = tanh(w_x·x_t + b + w_static·x_static + w_h·(cont_t·h_{t-1}))
                o_t = tanh(w_o·h_t + b_o)

The input projections of all time steps are one GEMM over (T·N) rows before the loop; only
the small recurrent GEMM (N, H) x (H, 4H) runs per step. Backward runs the recurrence in
reverse (BPTT), collecting the pre-activation gradients of every step, then derives the
input and weight gradients again as single GEMMs over all steps. The forward leaves in
``ws`` everything the backward needs (activations, states, cont-scaled previous states), so
a backward must follow the forward it belongs to with the same ``ws``.

Outputs and bottom gradients are assigned; parameter gradients accumulate (+=). A gradient
argument left as None is not computed. All scratch comes from ``ws`` (built once by the
matching ``*_workspace_shapes``): nothing is allocated per call.
"""

from __future__ import annotations

import numpy

from netforge.ops.neuron import sigmoid_backward, sigmoid_forward, tanh_backward
from netforge.ops.xp import Array, WorkspaceSpec, get_array_module, view_as

# --------------------------------------------------------------------------- shared helpers


def _gate_blocks(a: Array, hidden: int) -> tuple[Array, Array, Array, Array]:
    """The i, f, o, g column blocks of an (N, 4H) array, as views."""
    return tuple(a[:, k * hidden:(k + 1) * hidden] for k in range(4))


def _times_sigmoid_grad(d: Array, y: Array, tmp: Array) -> None:
    """d *= y·(1 − y): the chain rule through a sigmoid whose output is y."""
    sigmoid_backward(d, y, d, ws={"tmp": tmp})


def _times_tanh_grad(d: Array, y: Array, tmp: Array) -> None:
    """d *= 1 − y²: the chain rule through a tanh whose output is y."""
    tanh_backward(d, y, d, ws={"tmp": tmp})


def _add_matmul(xp, a: Array, b: Array, out: Array, stage: Array) -> None:
    """out += a @ b (numpy's matmul has no accumulate form, so stage the product)."""
    xp.matmul(a, b, out=stage)
    xp.add(out, stage, out=out)


def _add_column_sums(xp, a: Array, out: Array, stage: Array) -> None:
    """out += a (rows, G) summed over its rows (staged, like ``_add_matmul``)."""
    xp.sum(a, axis=0, out=stage)
    xp.add(out, stage, out=out)


def _add_recurrent_input(xp, h_prev: Array, cont_t: Array, w_h: Array, h_conted_t: Array,
                         step: Array, pre_t: Array) -> None:
    """pre_t += w_h·(cont_t·h_prev), keeping cont_t·h_prev in h_conted_t for the backward."""
    xp.multiply(h_prev, cont_t, out=h_conted_t)
    xp.matmul(h_conted_t, w_h.T, out=step)
    xp.add(pre_t, step, out=pre_t)


def _recurrent_grad(xp, dpre_t: Array, w_h: Array, cont_t: Array, dh_prev: Array) -> None:
    """dh_prev = cont_t·(dpre_t·w_h): the gradient reaching h_{t-1} through the recurrence."""
    xp.matmul(dpre_t, w_h, out=dh_prev)
    xp.multiply(dh_prev, cont_t, out=dh_prev)


def _project_inputs(xp, x: Array, w_x: Array, b: Array, x_static: Array | None,
                    w_static: Array | None, pre: Array, static_pre: Array | None) -> None:
    """pre (T, N, G) = x·w_xᵀ + b (+ x_static·w_staticᵀ, the same for every step):
    every time step's input projection in one GEMM over T·N rows."""
    t, n, d = x.shape
    g = pre.shape[2]
    xp.matmul(view_as(x, (t * n, d)), w_x.T, out=view_as(pre, (t * n, g)))
    xp.add(pre, b, out=pre)
    if x_static is not None:
        xp.matmul(x_static, w_static.T, out=static_pre)
        xp.add(pre, static_pre, out=pre)  # broadcast over the time axis


def _inputs_backward(xp, dpre: Array, x: Array, prev_conted: Array, w_x: Array,
                     x_static: Array | None, w_static: Array | None, *, dx, dw_x, db, dw_h,
                     dx_static, dw_static, ws: dict) -> None:
    """Gradients through ``_project_inputs`` and the recurrent GEMM, given the
    pre-activation gradients dpre (T, N, G) of all steps: one GEMM per gradient."""
    t, n, g = dpre.shape
    d = x.shape[2]
    dpre2 = view_as(dpre, (t * n, g))
    if dw_x is not None:
        _add_matmul(xp, dpre2.T, view_as(x, (t * n, d)), dw_x, ws["dw_x"])
    if db is not None:
        _add_column_sums(xp, dpre2, db, ws["db"])
    if dw_h is not None:
        # The recurrent GEMM of step t read cont_t·h_{t-1}, stored as prev_conted[t].
        h = prev_conted.shape[2]
        _add_matmul(xp, dpre2.T, view_as(prev_conted, (t * n, h)), dw_h, ws["dw_h"])
    if x_static is not None and (dx_static is not None or dw_static is not None):
        # x_static fed every step, so its gradient sums the steps' gradients.
        dstatic = ws["static_pre"]
        xp.sum(dpre, axis=0, out=dstatic)
        if dw_static is not None:
            _add_matmul(xp, dstatic.T, x_static, dw_static, ws["dw_static"])
        if dx_static is not None:
            xp.matmul(dstatic, w_static, out=dx_static)
    if dx is not None:
        xp.matmul(dpre2, w_x, out=view_as(dx, (t * n, d)))


def _recurrent_spec(steps: int, batch: int, input_dim: int, hidden: int, static_dim: int,
                    gate_rows: int, dtype) -> WorkspaceSpec:
    """Scratch common to LSTM and RNN; ``gate_rows`` is 4H (LSTM) or H (RNN)."""
    dtype = numpy.dtype(dtype)
    spec: WorkspaceSpec = {
        "prev_conted": ((steps, batch, hidden), dtype),  # cont_t · h_{t-1}, every step
        "step": ((batch, gate_rows), dtype),  # the per-step recurrent GEMM's product
        "dh_rec": ((batch, hidden), dtype),  # gradient flowing back into h_{t-1}
        "tmp": ((batch, hidden), dtype),
        "dw_x": ((gate_rows, input_dim), dtype),
        "db": ((gate_rows,), dtype),
        "dw_h": ((gate_rows, hidden), dtype),
    }
    if static_dim:
        # x_static's projection in forward; the sum of the steps' gradients in backward.
        spec["static_pre"] = ((batch, gate_rows), dtype)
        spec["dw_static"] = ((gate_rows, static_dim), dtype)
    return spec


# --------------------------------------------------------------------------- LSTM unit


def lstm_unit_workspace_shapes(batch: int, hidden: int,
                               dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """One step's saved activations ``acts`` (N, 4H), ``c_conted`` = cont·c_prev and
    ``tanh_c`` (N, H); (N, H) temporaries for the backward, and ``spare_*`` arrays that take
    a gradient the caller does not want (dgates is computed on the way to dc_prev)."""
    dtype = numpy.dtype(dtype)
    return {"acts": ((batch, 4 * hidden), dtype), "c_conted": ((batch, hidden), dtype),
            "tanh_c": ((batch, hidden), dtype), "tmp": ((batch, hidden), dtype),
            "tmp2": ((batch, hidden), dtype), "spare_dgates": ((batch, 4 * hidden), dtype),
            "spare_dc_prev": ((batch, hidden), dtype)}


def _cell_forward(xp, acts: Array, c_prev: Array, cont: Array, c_conted: Array, c: Array,
                  tanh_c: Array, h: Array) -> None:
    """One LSTM cell step. acts (N, 4H) holds the gate pre-activations on entry and their
    activations (i, f, o, g) on return; cont is (N, 1)."""
    hidden = c.shape[1]
    sigmoid_part = acts[:, :3 * hidden]
    sigmoid_forward(sigmoid_part, sigmoid_part)
    xp.tanh(acts[:, 3 * hidden:], out=acts[:, 3 * hidden:])
    i, f, o, g = _gate_blocks(acts, hidden)
    xp.multiply(c_prev, cont, out=c_conted)
    xp.multiply(f, c_conted, out=c)
    xp.multiply(i, g, out=tanh_c)  # tanh_c is free until the next line but one
    xp.add(c, tanh_c, out=c)
    xp.tanh(c, out=tanh_c)
    xp.multiply(o, tanh_c, out=h)


def _cell_backward(xp, acts: Array, cont: Array, c_conted: Array, tanh_c: Array, dh: Array,
                   dc: Array, dgates: Array, dc_prev: Array, tmp: Array, tmp2: Array) -> None:
    """Gradients of one cell step. dh, dc (N, H): total gradients reaching h_t and c_t.
    dgates (N, 4H): pre-activation gradients, assigned; dc_prev (N, H): gradient for
    c_{t-1}, assigned (it may be the same array as dc).

    The forget-gate gradient is the exact derivative of c_t = f·cont·c_{t-1}: it equals
    Caffe's c_prev·f·(1 − f), computed with f = cont·sigmoid, whenever cont is 0 or 1.
    """
    hidden = dh.shape[1]
    i, f, o, g = _gate_blocks(acts, hidden)
    di, df, do, dg = _gate_blocks(dgates, hidden)
    # Everything reaching c_t: directly, and through h_t = o·tanh(c_t).
    dc_total = tmp
    xp.multiply(dh, o, out=dc_total)
    _times_tanh_grad(dc_total, tanh_c, tmp2)
    xp.add(dc_total, dc, out=dc_total)

    xp.multiply(dc_total, g, out=di)
    _times_sigmoid_grad(di, i, tmp2)
    xp.multiply(dc_total, c_conted, out=df)
    _times_sigmoid_grad(df, f, tmp2)
    xp.multiply(dh, tanh_c, out=do)
    _times_sigmoid_grad(do, o, tmp2)
    xp.multiply(dc_total, i, out=dg)
    _times_tanh_grad(dg, g, tmp2)
    xp.multiply(dc_total, f, out=dc_prev)
    xp.multiply(dc_prev, cont, out=dc_prev)


def lstm_unit_forward(c_prev: Array, gates: Array, cont: Array, c: Array, h: Array, *,
                      ws: dict) -> None:
    """Caffe's LSTMUnit: one cell step for N streams.

    Args:
        c_prev: (N, H) previous cell state; gates: (N, 4H) pre-activations, blocks i, f, o, g;
        cont: (N,) sequence-continuation indicators; c, h: (N, H), assigned.
    """
    xp = get_array_module(c_prev)
    xp.copyto(ws["acts"], gates)
    _cell_forward(xp, ws["acts"], c_prev, cont[:, None], ws["c_conted"], c, ws["tanh_c"], h)


def lstm_unit_backward(dc: Array, dh: Array, cont: Array, *, dc_prev: Array | None,
                       dgates: Array | None, ws: dict) -> None:
    """Gradients of ``lstm_unit_forward`` (same ws): dc_prev (N, H) and dgates (N, 4H)
    are assigned; cont gets none. Either may be None (not wanted)."""
    if dgates is None and dc_prev is None:
        return
    xp = get_array_module(dc)
    dgates = ws["spare_dgates"] if dgates is None else dgates
    dc_prev = ws["spare_dc_prev"] if dc_prev is None else dc_prev
    _cell_backward(xp, ws["acts"], cont[:, None], ws["c_conted"], ws["tanh_c"], dh, dc,
                   dgates, dc_prev, ws["tmp"], ws["tmp2"])


# --------------------------------------------------------------------------- LSTM


def lstm_workspace_shapes(steps: int, batch: int, input_dim: int, hidden: int,
                          static_dim: int = 0,
                          dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """What ``lstm_forward`` keeps for the backward and the BPTT scratch.

    Saved per step (T, N, ·): ``gates`` (activations i, f, o, g), ``c``, ``tanh_c``,
    ``c_conted`` (cont_t·c_{t-1}) and ``prev_conted`` (cont_t·h_{t-1}); ``dgates`` collects
    the pre-activation gradients of all steps; the rest is (N, ·) per-step scratch and
    staging for the parameter gradients.
    """
    spec = _recurrent_spec(steps, batch, input_dim, hidden, static_dim, 4 * hidden, dtype)
    dtype = numpy.dtype(dtype)
    per_step, gate_rows = (steps, batch, hidden), (steps, batch, 4 * hidden)
    spec.update({
        "gates": (gate_rows, dtype), "dgates": (gate_rows, dtype),
        "c": (per_step, dtype), "tanh_c": (per_step, dtype), "c_conted": (per_step, dtype),
        "dh": ((batch, hidden), dtype), "dc": ((batch, hidden), dtype),
        "tmp2": ((batch, hidden), dtype),
    })
    return spec


def lstm_forward(x: Array, cont: Array, h0: Array, c0: Array, w_x: Array, b: Array,
                 w_h: Array, h: Array, *, x_static: Array | None = None,
                 w_static: Array | None = None, ws: dict) -> None:
    """Caffe's LSTM over T steps.

    Args:
        x: (T, N, D); cont: (T, N); h0, c0: (N, H) states before step 0.
        w_x: (4H, D); b: (4H,); w_h: (4H, H); x_static: (N, Ds) or None; w_static: (4H, Ds).
        h: (T, N, H), assigned: every step's hidden state. The cell states are left in
        ws["c"] (so c_T is ws["c"][-1]).
    """
    xp = get_array_module(x)
    gates, c, tanh_c = ws["gates"], ws["c"], ws["tanh_c"]
    c_conted, h_conted, step = ws["c_conted"], ws["prev_conted"], ws["step"]
    _project_inputs(xp, x, w_x, b, x_static, w_static, gates, ws.get("static_pre"))
    for t in range(x.shape[0]):
        h_prev, c_prev = (h0, c0) if t == 0 else (h[t - 1], c[t - 1])
        cont_t = cont[t][:, None]
        _add_recurrent_input(xp, h_prev, cont_t, w_h, h_conted[t], step, gates[t])
        _cell_forward(xp, gates[t], c_prev, cont_t, c_conted[t], c[t], tanh_c[t], h[t])


def lstm_backward(dh: Array, x: Array, cont: Array, w_x: Array, w_h: Array, *,
                  x_static: Array | None = None, w_static: Array | None = None,
                  dh_last: Array | None = None, dc_last: Array | None = None,
                  dx: Array | None = None, dw_x: Array | None = None, db: Array | None = None,
                  dw_h: Array | None = None, dx_static: Array | None = None,
                  dw_static: Array | None = None, dh0: Array | None = None,
                  dc0: Array | None = None, ws: dict) -> None:
    """Backpropagation through time for ``lstm_forward`` (same ws).

    Args:
        dh: (T, N, H) gradient of every step's h; dh_last, dc_last: (N, H) extra gradients
        of h_T and c_T (exposed final states), or None for zero.
        dx (T, N, D), dx_static (N, Ds), dh0, dc0 (N, H): assigned; dw_x, db, dw_h,
        dw_static: accumulated. None = not wanted. cont gets no gradient.
    """
    xp = get_array_module(dh)
    gates, dgates, tanh_c, c_conted = ws["gates"], ws["dgates"], ws["tanh_c"], ws["c_conted"]
    dh_t, dh_rec, dc = ws["dh"], ws["dh_rec"], ws["dc"]
    _start_from(xp, dh_rec, dh_last)
    _start_from(xp, dc, dc_last)
    for t in reversed(range(dh.shape[0])):
        cont_t = cont[t][:, None]
        xp.add(dh[t], dh_rec, out=dh_t)
        # dc comes in as the gradient of c_t and leaves as that of c_{t-1}.
        _cell_backward(xp, gates[t], cont_t, c_conted[t], tanh_c[t], dh_t, dc, dgates[t], dc,
                       ws["tmp"], ws["tmp2"])
        if t > 0 or dh0 is not None:
            _recurrent_grad(xp, dgates[t], w_h, cont_t, dh_rec)
    if dh0 is not None:
        xp.copyto(dh0, dh_rec)
    if dc0 is not None:
        xp.copyto(dc0, dc)
    _inputs_backward(xp, dgates, x, ws["prev_conted"], w_x, x_static, w_static, dx=dx,
                     dw_x=dw_x, db=db, dw_h=dw_h, dx_static=dx_static, dw_static=dw_static,
                     ws=ws)


def _start_from(xp, state_grad: Array, given: Array | None) -> None:
    """The gradient entering the last step from beyond it: the top's, or zero."""
    if given is None:
        state_grad.fill(0)
    else:
        xp.copyto(state_grad, given)


# --------------------------------------------------------------------------- RNN


def rnn_workspace_shapes(steps: int, batch: int, input_dim: int, hidden: int,
                         static_dim: int = 0,
                         dtype: numpy.dtype = numpy.float32) -> WorkspaceSpec:
    """What ``rnn_forward`` keeps for the backward (``h``: every step's hidden state,
    ``prev_conted``: cont_t·h_{t-1}, ``o``: the outputs, kept because a layer after this
    one may overwrite its top in place) and the BPTT scratch (``dpre``: pre-activation
    gradients of all steps, ``do_pre``: the output tanh's), plus parameter staging."""
    spec = _recurrent_spec(steps, batch, input_dim, hidden, static_dim, hidden, dtype)
    dtype = numpy.dtype(dtype)
    per_step = (steps, batch, hidden)
    spec.update({
        "h": (per_step, dtype), "o": (per_step, dtype),
        "dpre": (per_step, dtype), "do_pre": (per_step, dtype),
        "dw_o": ((hidden, hidden), dtype), "db_o": ((hidden,), dtype),
    })
    return spec


def rnn_forward(x: Array, cont: Array, h0: Array, w_x: Array, b: Array, w_h: Array,
                w_o: Array, b_o: Array, o: Array, *, x_static: Array | None = None,
                w_static: Array | None = None, ws: dict) -> None:
    """Caffe's RNN over T steps.

    Args:
        x: (T, N, D); cont: (T, N); h0: (N, H) the state before step 0.
        w_x: (H, D); b: (H,); w_h: (H, H); w_o: (H, H); b_o: (H,);
        x_static: (N, Ds) or None; w_static: (H, Ds).
        o: (T, N, H), assigned: every step's output. The hidden states are left in ws["h"]
        (so h_T is ws["h"][-1]).
    """
    xp = get_array_module(x)
    hs, h_conted, step = ws["h"], ws["prev_conted"], ws["step"]
    _project_inputs(xp, x, w_x, b, x_static, w_static, hs, ws.get("static_pre"))
    for t in range(x.shape[0]):
        h_prev = h0 if t == 0 else hs[t - 1]
        _add_recurrent_input(xp, h_prev, cont[t][:, None], w_h, h_conted[t], step, hs[t])
        xp.tanh(hs[t], out=hs[t])
    # The output layer has no recurrence: one GEMM over all steps.
    t_n = x.shape[0] * x.shape[1]
    hidden = o.shape[2]
    o2 = view_as(o, (t_n, hidden))
    xp.matmul(view_as(hs, (t_n, hidden)), w_o.T, out=o2)
    xp.add(o2, b_o, out=o2)
    xp.tanh(o2, out=o2)
    xp.copyto(ws["o"], o)


def rnn_backward(do: Array, x: Array, cont: Array, w_x: Array, w_h: Array,
                 w_o: Array, *, x_static: Array | None = None, w_static: Array | None = None,
                 dh_last: Array | None = None, dx: Array | None = None,
                 dw_x: Array | None = None, db: Array | None = None, dw_h: Array | None = None,
                 dw_o: Array | None = None, db_o: Array | None = None,
                 dx_static: Array | None = None, dw_static: Array | None = None,
                 dh0: Array | None = None, ws: dict) -> None:
    """Backpropagation through time for ``rnn_forward`` (same ws).

    Args:
        do: (T, N, H) gradient of the outputs;
        dh_last: (N, H) extra gradient of h_T (exposed final state), or None for zero.
        dx, dx_static, dh0: assigned; dw_x, db, dw_h, dw_o, db_o, dw_static: accumulated.
        None = not wanted. cont gets no gradient.
    """
    xp = get_array_module(do)
    steps, batch, hidden = do.shape
    hs, dpre, do_pre, dh_rec, tmp = ws["h"], ws["dpre"], ws["do_pre"], ws["dh_rec"], ws["tmp"]
    rows = (steps * batch, hidden)
    do_pre2, hs2, dpre2 = view_as(do_pre, rows), view_as(hs, rows), view_as(dpre, rows)
    # Through o = tanh(w_o·h + b_o), for all steps at once.
    xp.copyto(do_pre, do)
    _times_tanh_grad(do_pre, ws["o"], dpre)  # dpre is free scratch until the GEMM below
    if dw_o is not None:
        _add_matmul(xp, do_pre2.T, hs2, dw_o, ws["dw_o"])
    if db_o is not None:
        _add_column_sums(xp, do_pre2, db_o, ws["db_o"])
    xp.matmul(do_pre2, w_o, out=dpre2)  # gradient of each h_t from its own output
    # Through the recurrence, last step first.
    _start_from(xp, dh_rec, dh_last)
    for t in reversed(range(steps)):
        xp.add(dpre[t], dh_rec, out=dpre[t])
        _times_tanh_grad(dpre[t], hs[t], tmp)
        if t > 0 or dh0 is not None:
            _recurrent_grad(xp, dpre[t], w_h, cont[t][:, None], dh_rec)
    if dh0 is not None:
        xp.copyto(dh0, dh_rec)
    _inputs_backward(xp, dpre, x, ws["prev_conted"], w_x, x_static, w_static, dx=dx,
                     dw_x=dw_x, db=db, dw_h=dw_h, dx_static=dx_static, dw_static=dw_static,
                     ws=ws)
