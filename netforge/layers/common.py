"""Structure and fully-connected layers: InnerProduct, Split, Flatten, Concat, Eltwise,
Softmax. The arithmetic lives in ``netforge.ops.common``."""

from __future__ import annotations

from math import prod

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError
from netforge.layers.base import Layer, ScratchBuffer, scratch_in
from netforge.layers.registry import register
from netforge.ops import common as ops
from netforge.ops import engine


def canonical_axis(axis: int, ndim: int, label: str) -> int:
    if not -ndim <= axis < ndim:
        raise ConfigError(f"{label}: axis {axis} is out of range for a {ndim}-D blob")
    return axis % ndim


@register("InnerProduct")
class InnerProductLayer(Layer):
    """y = x·Wᵀ + b, x flattened from ``axis`` into (M, K); W is (num_output, K)."""

    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise ConfigError(f"{self.label}: num_output must be positive")
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self.label)
        k = prod(shape[self.axis:])
        self.transpose = p.transpose
        w_shape = (k, p.num_output) if self.transpose else (p.num_output, k)
        self.add_param(w_shape, p.weight_filler)
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_param((p.num_output,), p.bias_filler)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        k = prod(shape[self.axis:])
        expected = self.blobs[0].shape[0 if self.transpose else 1]
        if k != expected:
            raise self.shape_error(
                f'bottom "{self.param.bottom[0]}" has {k} features per sample (shape {shape}) '
                f"but the weights expect {expected}"
            )
        self.m = prod(shape[: self.axis])
        n = self.blobs[0].shape[1 if self.transpose else 0]
        self.declare_dict("ws", ops.linear_workspace_shapes(self.blobs[0].shape,
                                                            transpose=self.transpose,
                                                            dtype=self.dtype))
        self.declare_layout("plan", engine.linear_layout(  # the cores' share of the work
            self.m, n, self.xp, w_shape=self.blobs[0].shape, transpose=self.transpose,
            dtype=self.dtype))
        return [(*shape[: self.axis], n)]

    def scratch_buffers(self) -> list[ScratchBuffer]:
        return scratch_in(self.ws)  # gradient staging only, filled and used within one backward

    def forward(self, bottoms, tops, *, epilogue=None):
        """``epilogue``: an in-place ReLU after this layer, fused in by the graph
        (``netforge.graph.fusion``)."""
        x = bottoms[0].data.reshape(self.m, -1)
        y = tops[0].data.reshape(self.m, -1)
        w = self.blobs[0].data
        b = self.blobs[1].data if self.bias_term else None
        engine.linear_forward(self.plan, x, w, b, y, transpose=self.transpose,
                              epilogue=epilogue)

    def backward(self, tops, propagate_down, bottoms):
        dy = tops[0].diff.reshape(self.m, -1)
        x = bottoms[0].data.reshape(self.m, -1)
        w = self.blobs[0].data
        dx = bottoms[0].diff.reshape(self.m, -1) if propagate_down[0] else None
        dw = self.blobs[0].diff if self.param_propagate_down[0] else None
        db = None
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].diff
        engine.linear_backward(self.plan, dy, x, w, dx=dx, dw=dw, db=db,
                               transpose=self.transpose, ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """x, for the weight gradient."""
        return (0,), ()


@register("Split")
class SplitLayer(Layer):
    """One bottom read by several consumers: tops alias the bottom's data (no copy), and
    backward sums the tops' diffs. Inserted automatically by the graph compiler."""

    num_bottoms = 1
    min_tops = 1

    def reshape(self, bottom_shapes):
        return [bottom_shapes[0]] * len(self.param.top)

    def share_tops(self, bottoms, tops):
        for top in tops:
            top.share_data(bottoms[0])  # a split forwards by aliasing, it never copies

    def forward(self, bottoms, tops):
        pass  # tops share the bottom's data array

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        self.xp.copyto(dx, tops[0].diff)
        for top in tops[1:]:
            dx += top.diff

    def backward_reads(self, bottoms, tops):
        """A sum of diffs."""
        return (), ()


@register("Flatten")
class FlattenLayer(Layer):
    """Collapse axes ``axis``..``end_axis`` into one."""

    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom_shapes):
        p = self.param.flatten_param
        shape = bottom_shapes[0]
        start = canonical_axis(p.axis, len(shape), self.label)
        end = canonical_axis(p.end_axis, len(shape), self.label)
        return [(*shape[:start], prod(shape[start : end + 1]), *shape[end + 1 :])]

    def forward(self, bottoms, tops):
        self.xp.copyto(tops[0].data.reshape(-1), bottoms[0].data.reshape(-1))

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            self.xp.copyto(bottoms[0].diff.reshape(-1), tops[0].diff.reshape(-1))

    def backward_reads(self, bottoms, tops):
        """A copy of diffs."""
        return (), ()


@register("Concat")
class ConcatLayer(Layer):
    """Join bottoms along ``axis`` (deprecated ``concat_dim`` honoured)."""

    min_bottoms = 1
    num_tops = 1

    def reshape(self, bottom_shapes):
        p = self.param.concat_param
        first = bottom_shapes[0]
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(axis, len(first), self.label)
        for j, shape in enumerate(bottom_shapes[1:], start=1):
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first, strict=True)) if i != self.axis
            ):
                raise self.shape_error(
                    f'bottom "{self.param.bottom[j]}" has shape {shape}, which does not match '
                    f'bottom "{self.param.bottom[0]}" {first} outside axis {self.axis}'
                )
        self.widths = [shape[self.axis] for shape in bottom_shapes]
        return [(*first[: self.axis], sum(self.widths), *first[self.axis + 1 :])]

    def forward(self, bottoms, tops):
        ops.concat_forward([b.data for b in bottoms], tops[0].data, axis=self.axis)

    def backward(self, tops, propagate_down, bottoms):
        ops.concat_backward(tops[0].diff,
                            [b.diff if propagate_down[j] else None for j, b in enumerate(bottoms)],
                            axis=self.axis, widths=self.widths)

    def backward_reads(self, bottoms, tops):
        """Slices of the top diff."""
        return (), ()


@register("Eltwise")
class EltwiseLayer(Layer):
    """Elementwise SUM (with per-bottom coeff), PROD or MAX of two or more bottoms."""

    min_bottoms = 2
    num_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.eltwise_param
        self.operation = p.operation
        self.coeffs = list(p.coeff) or [1.0] * len(bottom_shapes)
        if len(self.coeffs) != len(bottom_shapes):
            raise ConfigError(f"{self.label}: {len(p.coeff)} coeff values for "
                              f"{len(bottom_shapes)} bottoms (give one per bottom)")
        if p.coeff and self.operation != pb.EltwiseParameter.SUM:
            raise ConfigError(f"{self.label}: coeff is only for operation SUM")
        self.stable_prod_grad = p.stable_prod_grad

    def reshape(self, bottom_shapes):
        for j, shape in enumerate(bottom_shapes[1:], start=1):
            if shape != bottom_shapes[0]:
                raise self.shape_error(
                    f'bottom "{self.param.bottom[j]}" has shape {shape} but bottom '
                    f'"{self.param.bottom[0]}" has {bottom_shapes[0]}'
                )
        if self.operation == pb.EltwiseParameter.MAX:
            self.declare("argmax", bottom_shapes[0], self.xp.int32)
        self.declare_dict("ws", ops.eltwise_workspace_shapes(bottom_shapes[0], self.dtype))
        return [bottom_shapes[0]]

    def scratch_buffers(self) -> list[ScratchBuffer]:
        return scratch_in(self.ws)  # the MAX argmax is kept outside it

    def forward(self, bottoms, tops):
        xs = [b.data for b in bottoms]
        y = tops[0].data
        if self.operation == pb.EltwiseParameter.SUM:
            ops.eltwise_sum_forward(xs, self.coeffs, y, ws=self.ws)
        elif self.operation == pb.EltwiseParameter.PROD:
            ops.eltwise_prod_forward(xs, y)
        else:
            ops.eltwise_max_forward(xs, y, self.argmax, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        dy = tops[0].diff
        dxs = [b.diff if propagate_down[j] else None for j, b in enumerate(bottoms)]
        if self.operation == pb.EltwiseParameter.SUM:
            ops.eltwise_sum_backward(dy, self.coeffs, dxs)
        elif self.operation == pb.EltwiseParameter.PROD:
            ops.eltwise_prod_backward(dy, [b.data for b in bottoms], tops[0].data, dxs,
                                      stable=self.stable_prod_grad)
        else:
            ops.eltwise_max_backward(dy, self.argmax, dxs, ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """SUM: nothing; MAX: its own argmax; PROD: the bottoms and the top."""
        if self.operation == pb.EltwiseParameter.PROD:
            return tuple(range(len(bottoms))), (0,)
        return (), ()


@register("Softmax")
class SoftmaxLayer(Layer):
    """Softmax over ``axis`` (default 1, the channels)."""

    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom_shapes):
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]),
                                   self.label)
        self.declare_dict("ws", ops.softmax_workspace_shapes(bottom_shapes[0], self.axis,
                                                             self.dtype))
        return [bottom_shapes[0]]

    def scratch_buffers(self) -> list[ScratchBuffer]:
        return scratch_in(self.ws)

    def forward(self, bottoms, tops):
        ops.softmax_forward(bottoms[0].data, tops[0].data, axis=self.axis, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.softmax_backward(tops[0].data, tops[0].diff, bottoms[0].diff, axis=self.axis,
                                 ws=self.ws)

    def backward_reads(self, bottoms, tops):
        """The derivative comes from the probabilities, its top."""
        return (), (0,)
