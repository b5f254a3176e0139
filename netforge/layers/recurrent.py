"""Recurrent layers: LSTM and RNN (Caffe's RecurrentLayer family) and LSTMUnit.
The arithmetic lives in ``netforge.ops.recurrent``.

Caffe builds an unrolled internal Net for LSTM/RNN; netforge computes the same function
directly (one GEMM for every step's input projection, a loop over T for the recurrence,
BPTT backward), keeping Caffe's bottoms, tops, parameter blobs and their order:

    bottoms  x (T, N, ...), cont (T, N), [x_static (N, ...)],
             [h_0 (, c_0 for LSTM) (1, N, num_output) when expose_hidden]
    tops     LSTM h / RNN o (T, N, num_output), [h_T (, c_T) (1, N, num_output)]
    blobs    LSTM: W_xc (4H, D), b_c (4H,), [W_xc_static (4H, Ds)], W_hc (4H, H)
             RNN:  W_xh (H, D), b_h (H,), [W_xh_static (H, Ds)], W_hh (H, H), W_ho (H, H),
                   b_o (H,)
(D = features per x step, Ds = features per x_static sample, H = num_output.) The order is
that in which Caffe's unrolled net first meets each parameter, which is the order of the
blobs in a .caffemodel.

Two behaviours follow Caffe's RecurrentLayer exactly:
- Without expose_hidden, the state carries over between forward passes: each forward
  starts from the previous forward's final h_T (and c_T), zero at first. A cont of 0 at
  t = 0 starts fresh sequences; a cont of 1 continues the previous batch's sequences.
  No gradient crosses from one batch into the previous one.
- cont multiplies the previous states (it is normally 0 or 1), and gets no gradient.
One deliberate difference: with expose_hidden, Caffe 1.0 shares only the *data* of h_0/c_0
and h_T/c_T with its internal net, so it silently drops the gradients of h_0/c_0 and ignores
the diffs of the h_T/c_T tops. netforge backpropagates both (the exact gradient), which is
what a net chaining recurrent layers through exposed states needs.
"""

from __future__ import annotations

import logging
from math import prod

from netforge.errors import ConfigError
from netforge.layers.base import Layer
from netforge.layers.registry import register
from netforge.ops import recurrent as ops
from netforge.ops.xp import view_as

log = logging.getLogger("netforge")


class _RecurrentLayer(Layer):
    """Bottom/top/parameter wiring shared by LSTM and RNN; subclasses name their states
    and parameters and call their kernels."""

    state_names: tuple[str, ...] = ()  # recurrent states, in Caffe's bottom/top order
    no_gradient_bottoms = (1,)  # cont: sequence indicators are not differentiable

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        # Arity depends on expose_hidden (Caffe's Min/MaxBottomBlobs, ExactNumTopBlobs).
        self.expose_hidden = bool(param.recurrent_param.expose_hidden)
        self.num_exposed = len(self.state_names) if self.expose_hidden else 0
        self.min_bottoms = 2 + self.num_exposed
        self.max_bottoms = 3 + self.num_exposed  # + the optional x_static
        self.num_tops = 1 + self.num_exposed
        self.carry = None  # (states, N, H) final states of the previous forward

    # -- parameters -----------------------------------------------------------------------
    def param_layout(self, input_dim: int, static_dim: int) -> list[tuple[str, tuple, str]]:
        """(Caffe's name, shape, "weight" or "bias") for each blob, in Caffe's order."""
        raise NotImplementedError

    def setup(self, bottom_shapes):
        p = self.param.recurrent_param
        if p.num_output <= 0:
            raise ConfigError(f"{self.label}: recurrent_param.num_output must be positive "
                              f"(got {p.num_output})")
        self.hidden = int(p.num_output)
        self.debug_info = bool(p.debug_info)
        # Caffe: a bottom beyond x, cont and the exposed states is the static input.
        self.static_input = len(bottom_shapes) > 2 + self.num_exposed
        self.first_state = 3 if self.static_input else 2  # bottom index of h_0
        self._check_x(bottom_shapes[0])
        input_dim = prod(bottom_shapes[0][2:])
        static_dim = 0
        if self.static_input:
            self._check_static(bottom_shapes[2], bottom_shapes[0][1])
            static_dim = prod(bottom_shapes[2][1:])
        self.param_index = {}
        for name, shape, kind in self.param_layout(input_dim, static_dim):
            filler = p.weight_filler if kind == "weight" else p.bias_filler
            self.param_index[name] = len(self.blobs)
            self.add_param(shape, filler)

    def data(self, name: str):
        return self.blobs[self.param_index[name]].data

    def diff(self, name: str):
        """The parameter's diff, or None when its gradient is not wanted."""
        k = self.param_index.get(name)
        if k is None or not self.param_propagate_down[k]:
            return None
        return self.blobs[k].diff

    # -- shapes ---------------------------------------------------------------------------
    def _bottom_name(self, j: int) -> str:
        return self.param.bottom[j] if j < len(self.param.bottom) else f"#{j}"

    def _check_x(self, shape):
        if len(shape) < 3:
            raise self.shape_error(
                f'bottom "{self._bottom_name(0)}" has shape {shape}; x must be '
                "(T, N, features...) with at least 3 axes (time-major)")

    def _check_static(self, shape, batch):
        if len(shape) < 2 or shape[0] != batch:
            raise self.shape_error(
                f'static input "{self._bottom_name(2)}" has shape {shape}; expected '
                f"(N, features...) with N = {batch} streams, as in x")

    def reshape(self, bottom_shapes):
        x_shape = bottom_shapes[0]
        self._check_x(x_shape)
        steps, batch = x_shape[:2]
        input_dim = prod(x_shape[2:])
        w_x = self.blobs[0]
        if input_dim != w_x.shape[1]:
            raise self.shape_error(
                f'bottom "{self._bottom_name(0)}" has {input_dim} features per step (shape '
                f"{x_shape}) but the weights expect {w_x.shape[1]}")
        if tuple(bottom_shapes[1]) != (steps, batch):
            raise self.shape_error(
                f'cont "{self._bottom_name(1)}" has shape {bottom_shapes[1]}; expected '
                f"(T, N) = {(steps, batch)} to match x {x_shape}")
        static_dim = 0
        if self.static_input:
            self._check_static(bottom_shapes[2], batch)
            static_dim = prod(bottom_shapes[2][1:])
            expected = self.blobs[2].shape[1]
            if static_dim != expected:
                raise self.shape_error(
                    f'static input "{self._bottom_name(2)}" has {static_dim} features per '
                    f"sample (shape {bottom_shapes[2]}) but the weights expect {expected}")
        state_shape = (1, batch, self.hidden)
        for k, name in enumerate(self.state_names[: self.num_exposed]):
            j = self.first_state + k
            if tuple(bottom_shapes[j]) != state_shape:
                raise self.shape_error(
                    f'initial state {name}_0 "{self._bottom_name(j)}" has shape '
                    f"{bottom_shapes[j]}; expected {state_shape}")
        self.steps, self.batch, self.input_dim = steps, batch, input_dim
        self.declare_dict("ws", self.workspace_shapes(steps, batch, input_dim, static_dim))
        carry_shape = (len(self.state_names), batch, self.hidden)
        if not self.expose_hidden:
            # Caffe's recurrent inputs start at zero; a new batch size starts over.
            self.declare("carry", carry_shape, state=True)
        return [(steps, batch, self.hidden)] + [state_shape] * self.num_exposed

    def workspace_shapes(self, steps, batch, input_dim, static_dim):
        raise NotImplementedError

    # -- running --------------------------------------------------------------------------
    def _x(self, blob, attr="data"):
        return view_as(getattr(blob, attr), (self.steps, self.batch, self.input_dim))

    def _static(self, bottoms, attr="data"):
        if not self.static_input:
            return None
        return view_as(getattr(bottoms[2], attr), (self.batch, -1))

    def _state(self, array):
        return view_as(array, (self.batch, self.hidden))

    def initial_states(self, bottoms) -> list:
        if self.expose_hidden:
            return [self._state(bottoms[self.first_state + k].data)
                    for k in range(len(self.state_names))]
        return list(self.carry)

    def finish_forward(self, tops, final_states) -> None:
        """Publish the final states: to the exposed tops, or to the carry for next time."""
        for k, final in enumerate(final_states):
            target = self._state(tops[1 + k].data) if self.expose_hidden else self.carry[k]
            self.xp.copyto(target, final)
        if self.debug_info:
            self._log_debug("Forward", [("top blob", self.param.top[0], tops[0].data)])

    def gradient_targets(self, tops, propagate_down, bottoms):
        """(dx, dx_static, d-initial-states, extra top diffs of the final states)."""
        dx = self._x(bottoms[0], "diff") if propagate_down[0] else None
        dx_static = None
        if self.static_input and propagate_down[2]:
            dx_static = self._static(bottoms, "diff")
        d_initial = [None] * len(self.state_names)
        d_final = [None] * len(self.state_names)
        if self.expose_hidden:
            for k in range(len(self.state_names)):
                j = self.first_state + k
                if propagate_down[j]:
                    d_initial[k] = self._state(bottoms[j].diff)
                d_final[k] = self._state(tops[1 + k].diff)
        return dx, dx_static, d_initial, d_final

    def finish_backward(self, propagate_down, bottoms) -> None:
        if self.debug_info:
            entries = [("bottom blob", self._bottom_name(j), b.diff)
                       for j, b in enumerate(bottoms) if propagate_down[j]]
            entries += [("param blob", name, self.blobs[k].diff)
                        for name, k in self.param_index.items()]
            self._log_debug("Backward", entries, "diff")

    def _log_debug(self, direction, entries, what="data") -> None:
        """Caffe's debug_info lines (mean absolute value per blob)."""
        for kind, name, array in entries:
            value = float(self.xp.abs(array).mean()) if array.size else 0.0
            log.info("    [%s] Layer %s, %s %s %s: %g", direction, self.name, kind, name, what,
                     value)


@register("LSTM")
class LSTMLayer(_RecurrentLayer):
    """Long short-term memory over T steps (gates i, f, o, g), output h (T, N, H)."""

    state_names = ("h", "c")

    def param_layout(self, input_dim, static_dim):
        gates = 4 * self.hidden
        layout = [("W_xc", (gates, input_dim), "weight"), ("b_c", (gates,), "bias")]
        if static_dim:
            layout.append(("W_xc_static", (gates, static_dim), "weight"))
        layout.append(("W_hc", (gates, self.hidden), "weight"))
        return layout

    def workspace_shapes(self, steps, batch, input_dim, static_dim):
        return ops.lstm_workspace_shapes(steps, batch, input_dim, self.hidden, static_dim,
                                         self.dtype)

    def forward(self, bottoms, tops):
        h0, c0 = self.initial_states(bottoms)
        w_static = self.data("W_xc_static") if self.static_input else None
        h = tops[0].data
        ops.lstm_forward(self._x(bottoms[0]), bottoms[1].data, h0, c0, self.data("W_xc"),
                         self.data("b_c"), self.data("W_hc"), h,
                         x_static=self._static(bottoms), w_static=w_static, ws=self.ws)
        self.finish_forward(tops, [h[-1], self.ws["c"][-1]])

    def backward(self, tops, propagate_down, bottoms):
        dx, dx_static, (dh0, dc0), (dh_last, dc_last) = self.gradient_targets(
            tops, propagate_down, bottoms)
        w_static = self.data("W_xc_static") if self.static_input else None
        ops.lstm_backward(tops[0].diff, self._x(bottoms[0]), bottoms[1].data,
                          self.data("W_xc"), self.data("W_hc"),
                          x_static=self._static(bottoms), w_static=w_static,
                          dh_last=dh_last, dc_last=dc_last, dx=dx, dw_x=self.diff("W_xc"),
                          db=self.diff("b_c"), dw_h=self.diff("W_hc"), dx_static=dx_static,
                          dw_static=self.diff("W_xc_static"), dh0=dh0, dc0=dc0, ws=self.ws)
        self.finish_backward(propagate_down, bottoms)


@register("RNN")
class RNNLayer(_RecurrentLayer):
    """Simple (Elman) recurrent net: h_t = tanh(...), output o_t = tanh(W_ho·h_t + b_o)."""

    state_names = ("h",)

    def param_layout(self, input_dim, static_dim):
        hidden = self.hidden
        layout = [("W_xh", (hidden, input_dim), "weight"), ("b_h", (hidden,), "bias")]
        if static_dim:
            layout.append(("W_xh_static", (hidden, static_dim), "weight"))
        layout += [("W_hh", (hidden, hidden), "weight"), ("W_ho", (hidden, hidden), "weight"),
                   ("b_o", (hidden,), "bias")]
        return layout

    def workspace_shapes(self, steps, batch, input_dim, static_dim):
        return ops.rnn_workspace_shapes(steps, batch, input_dim, self.hidden, static_dim,
                                        self.dtype)

    def forward(self, bottoms, tops):
        (h0,) = self.initial_states(bottoms)
        w_static = self.data("W_xh_static") if self.static_input else None
        ops.rnn_forward(self._x(bottoms[0]), bottoms[1].data, h0, self.data("W_xh"),
                        self.data("b_h"), self.data("W_hh"), self.data("W_ho"),
                        self.data("b_o"), tops[0].data, x_static=self._static(bottoms),
                        w_static=w_static, ws=self.ws)
        self.finish_forward(tops, [self.ws["h"][-1]])

    def backward(self, tops, propagate_down, bottoms):
        dx, dx_static, (dh0,), (dh_last,) = self.gradient_targets(tops, propagate_down,
                                                                   bottoms)
        w_static = self.data("W_xh_static") if self.static_input else None
        ops.rnn_backward(tops[0].diff, self._x(bottoms[0]), bottoms[1].data,
                         self.data("W_xh"), self.data("W_hh"), self.data("W_ho"),
                         x_static=self._static(bottoms), w_static=w_static, dh_last=dh_last,
                         dx=dx, dw_x=self.diff("W_xh"), db=self.diff("b_h"),
                         dw_h=self.diff("W_hh"), dw_o=self.diff("W_ho"), db_o=self.diff("b_o"),
                         dx_static=dx_static, dw_static=self.diff("W_xh_static"), dh0=dh0,
                         ws=self.ws)
        self.finish_backward(propagate_down, bottoms)


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM cell step: bottoms c_{t-1} (1, N, H), gate inputs (1, N, 4H) in blocks
    i, f, o, g, cont (1, N); tops c_t, h_t (1, N, H). No parameters; cont gets no gradient.
    """

    num_bottoms = 3
    num_tops = 2
    no_gradient_bottoms = (2,)

    def reshape(self, bottom_shapes):
        c_shape, gate_shape, cont_shape = (tuple(s) for s in bottom_shapes)
        if len(c_shape) != 3 or c_shape[0] != 1:
            raise self.shape_error(
                f'c_prev "{self.param.bottom[0]}" has shape {c_shape}; expected (1, N, H)')
        _, batch, hidden = c_shape
        if gate_shape != (1, batch, 4 * hidden):
            raise self.shape_error(
                f'gate input "{self.param.bottom[1]}" has shape {gate_shape}; expected '
                f"(1, N, 4H) = {(1, batch, 4 * hidden)} for c_prev {c_shape}")
        if cont_shape != (1, batch):
            raise self.shape_error(
                f'cont "{self.param.bottom[2]}" has shape {cont_shape}; expected (1, N) = '
                f"{(1, batch)}")
        self.batch, self.hidden = batch, hidden
        self.declare_dict("ws", ops.lstm_unit_workspace_shapes(batch, hidden, self.dtype))
        return [c_shape, c_shape]

    def _rows(self, array, width=1):
        return view_as(array, (self.batch, width * self.hidden))

    def forward(self, bottoms, tops):
        ops.lstm_unit_forward(self._rows(bottoms[0].data), self._rows(bottoms[1].data, 4),
                              view_as(bottoms[2].data, (self.batch,)),
                              self._rows(tops[0].data), self._rows(tops[1].data), ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        ops.lstm_unit_backward(
            self._rows(tops[0].diff), self._rows(tops[1].diff),
            view_as(bottoms[2].data, (self.batch,)),
            dc_prev=self._rows(bottoms[0].diff) if propagate_down[0] else None,
            dgates=self._rows(bottoms[1].diff, 4) if propagate_down[1] else None, ws=self.ws)
