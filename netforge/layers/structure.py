"""Structure layers: Slice, Reshape, Reduction, ArgMax, Tile, Filter, BatchReindex, Silence,
Parameter, Embed. The arithmetic lives in ``netforge.ops.structure``."""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, DataError, GraphError
from netforge.layers.base import Layer
from netforge.layers.common import canonical_axis
from netforge.layers.registry import register
from netforge.ops import common as common_ops
from netforge.ops import structure as ops


@register("Slice")
class SliceLayer(Layer):
    """Cut the bottom along ``axis`` at ``slice_point``s (none: equal parts). A single top
    shares the bottom's data and diff, as in Caffe."""

    num_bottoms = 1
    min_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.slice_param
        if p.HasField("slice_dim") and p.HasField("axis"):
            raise ConfigError(f"{self.label}: give either axis or slice_dim, not both")
        self.slice_points = list(p.slice_point)

    def reshape(self, bottom_shapes):
        p = self.param.slice_param
        shape = bottom_shapes[0]
        if p.HasField("slice_dim"):  # deprecated, non-negative only
            if p.slice_dim >= len(shape):
                raise ConfigError(f"{self.label}: slice_dim {p.slice_dim} is out of range for "
                                  f"a {len(shape)}-D bottom")
            self.axis = int(p.slice_dim)
        else:
            self.axis = canonical_axis(p.axis, len(shape), self.label)
        try:
            self.sizes = ops.slice_sizes(shape[self.axis], self.slice_points, len(self.param.top))
        except ValueError as exc:
            raise self.shape_error(f'bottom "{self.param.bottom[0]}" {shape}: {exc}') from None
        return [(*shape[: self.axis], size, *shape[self.axis + 1 :]) for size in self.sizes]

    def share_tops(self, bottoms, tops):
        if len(tops) == 1:
            tops[0].share_reshaped(bottoms[0], bottoms[0].shape)

    def forward(self, bottoms, tops):
        if len(tops) > 1:
            common_ops.concat_backward(bottoms[0].data, [t.data for t in tops], axis=self.axis,
                                       widths=self.sizes)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0] and len(tops) > 1:
            common_ops.concat_forward([t.diff for t in tops], bottoms[0].diff, axis=self.axis)


@register("Reshape")
class ReshapeLayer(Layer):
    """A new shape for the same values: 0 copies a bottom dim, -1 is inferred; ``axis`` and
    ``num_axes`` pick the bottom axes replaced. The top is a view of the bottom's data and
    diff, so forward and backward have nothing to do."""

    num_bottoms = 1
    num_tops = 1

    def reshape(self, bottom_shapes):
        p = self.param.reshape_param
        try:
            self.top_shape = ops.reshape_top_shape(bottom_shapes[0], p.shape.dim, p.axis,
                                                   p.num_axes)
        except ValueError as exc:
            raise self.shape_error(
                f'bottom "{self.param.bottom[0]}" {tuple(bottom_shapes[0])}: {exc}'
            ) from None
        return [self.top_shape]

    def share_tops(self, bottoms, tops):
        tops[0].share_reshaped(bottoms[0], self.top_shape)

    def forward(self, bottoms, tops):
        pass  # the top views the bottom's data

    def backward(self, tops, propagate_down, bottoms):
        pass  # ... and its diff

    def backward_reads(self, bottoms, tops):
        """No backward work (views)."""
        return (), ()


_REDUCTIONS = {pb.ReductionParameter.SUM: "SUM", pb.ReductionParameter.ASUM: "ASUM",
               pb.ReductionParameter.SUMSQ: "SUMSQ", pb.ReductionParameter.MEAN: "MEAN"}


@register("Reduction")
class ReductionLayer(Layer):
    """SUM, ASUM, SUMSQ or MEAN over every axis from ``axis`` on, times ``coeff``; the top
    keeps the axes before ``axis`` (a scalar for axis 0)."""

    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.reduction_param
        self.op = _REDUCTIONS[p.operation]
        self.coeff = float(p.coeff)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self.param.reduction_param.axis, len(shape), self.label)
        self.declare_dict("ws", ops.reduction_workspace_shapes(shape, self.axis, self.op,
                                                          self.dtype))
        return [tuple(shape[: self.axis])]

    def forward(self, bottoms, tops):
        ops.reduction_forward(bottoms[0].data, tops[0].data, axis=self.axis, op=self.op,
                              coeff=self.coeff, ws=self.ws)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.reduction_backward(bottoms[0].data, tops[0].diff, bottoms[0].diff,
                                   axis=self.axis, op=self.op, coeff=self.coeff)


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (and with ``out_max_val`` the values) of the ``top_k`` largest entries along
    ``axis``, or over each sample's flattened values when no axis is given. No backward."""

    num_bottoms = 1
    num_tops = 1
    has_backward = False
    no_gradient_bottoms = (0,)

    def setup(self, bottom_shapes):
        p = self.param.argmax_param
        self.top_k = int(p.top_k)
        self.out_max_val = p.out_max_val
        if self.top_k < 1:
            raise ConfigError(f"{self.label}: top_k must be at least 1")

    def reshape(self, bottom_shapes):
        p = self.param.argmax_param
        shape = bottom_shapes[0]
        if p.HasField("axis"):
            self.axis = canonical_axis(p.axis, len(shape), self.label)
            size, where = shape[self.axis], f"axis {self.axis}"
        else:
            self.axis = None
            size, where = 1, "each sample's flattened values"
            for d in shape[1:]:
                size *= d
        if self.top_k > size:
            raise self.shape_error(f"top_k ({self.top_k}) exceeds the {size} entries of "
                                   f"{where} of bottom {tuple(shape)}")
        return [ops.argmax_top_shape(shape, top_k=self.top_k, axis=self.axis,
                                     out_max_val=self.out_max_val)]

    def forward(self, bottoms, tops):
        ops.argmax_forward(bottoms[0].data, tops[0].data, top_k=self.top_k, axis=self.axis,
                           out_max_val=self.out_max_val)


@register("Tile")
class TileLayer(Layer):
    """``tiles`` copies of the bottom's trailing block (axes from ``axis`` on), along
    ``axis``."""

    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise ConfigError(f"{self.label}: tile_param needs tiles (the number of copies)")
        if p.tiles <= 0:
            raise ConfigError(f"{self.label}: tiles must be positive, got {p.tiles}")
        self.tiles = int(p.tiles)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self.param.tile_param.axis, len(shape), self.label)
        return [(*shape[: self.axis], shape[self.axis] * self.tiles, *shape[self.axis + 1 :])]

    def forward(self, bottoms, tops):
        ops.tile_forward(bottoms[0].data, tops[0].data, axis=self.axis, tiles=self.tiles)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.tile_backward(tops[0].diff, bottoms[0].diff, axis=self.axis, tiles=self.tiles)


@register("Filter")
class FilterLayer(Layer):
    """Keep the samples whose selector (the last bottom, one value per sample) is non-zero,
    in every other bottom. The number kept depends on the data: the tops are reshaped in
    forward and the net then reshapes the layers after this one."""

    min_bottoms = 2
    min_tops = 1
    dynamic_top_shapes = True

    def __init__(self, param, ctx):
        super().__init__(param, ctx)
        self.no_gradient_bottoms = (len(param.bottom) - 1,)  # the selector

    def setup(self, bottom_shapes):
        if len(self.param.top) != len(bottom_shapes) - 1:
            raise GraphError(f"{self.label} needs one top per filtered bottom: "
                             f"{len(bottom_shapes) - 1} top(s), got {len(self.param.top)}")

    def reshape(self, bottom_shapes):
        selector = bottom_shapes[-1]
        if any(d != 1 for d in selector[1:]):
            raise self.shape_error(f'selector bottom "{self.param.bottom[-1]}" has shape '
                                   f"{tuple(selector)}; all axes but the first must be 1")
        for j, shape in enumerate(bottom_shapes[:-1]):
            if not shape or shape[0] != selector[0]:
                raise self.shape_error(
                    f'bottom "{self.param.bottom[j]}" has shape {tuple(shape)} but the selector '
                    f"has {selector[0]} samples; the first axes must match")
        # Until a forward has seen the selector, assume every sample is kept (as Caffe's first
        # reshape does): the layers after get their largest shapes.
        return [tuple(shape) for shape in bottom_shapes[:-1]]

    def forward(self, bottoms, tops):
        self.rows = ops.selected_rows(bottoms[-1].data)
        for bottom, top in zip(bottoms[:-1], tops, strict=False):
            if top.shape[0] != len(self.rows):
                top.reshape(len(self.rows), *bottom.shape[1:])
            ops.filter_forward(bottom.data, self.rows, top.data)

    def backward(self, tops, propagate_down, bottoms):
        for j, top in enumerate(tops):
            if propagate_down[j]:
                ops.filter_backward(top.diff, self.rows, bottoms[j].diff)


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """top[n] = bottom[index[n]]: gather samples by the index bottom (1-D, float-valued);
    backward sums the gradients of repeated indices. No gradient to the indices."""

    num_bottoms = 2
    num_tops = 1
    no_gradient_bottoms = (1,)

    def reshape(self, bottom_shapes):
        data, index = bottom_shapes
        if len(index) != 1:
            raise self.shape_error(f'index bottom "{self.param.bottom[1]}" must be 1-D, got '
                                   f"shape {tuple(index)}")
        self.declare_dict("ws", ops.batch_reindex_workspace_shapes(index[0]))
        return [(index[0], *data[1:])]

    def _run(self, kernel, *arrays):
        try:
            kernel(*arrays, ws=self.ws)
        except ValueError as exc:
            raise DataError(f'{self.label}: bottom "{self.param.bottom[1]}": {exc} (the batch '
                            "size of the data)") from None

    def forward(self, bottoms, tops):
        self._run(ops.batch_reindex_forward, bottoms[0].data, bottoms[1].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            self._run(ops.batch_reindex_backward, tops[0].diff, bottoms[1].data,
                      bottoms[0].diff)


@register("Silence")
class SilenceLayer(Layer):
    """Consumes blobs nobody else reads, so they are not net outputs. Backward (run only
    under force_backward) writes zero gradients."""

    min_bottoms = 1
    num_tops = 0

    def reshape(self, bottom_shapes):
        return []

    def forward(self, bottoms, tops):
        pass

    def backward(self, tops, propagate_down, bottoms):
        for flag, bottom in zip(propagate_down, bottoms, strict=True):
            if flag:
                bottom.diff.fill(0)


@register("Parameter")
class ParameterLayer(Layer):
    """A learnable blob of ``parameter_param.shape`` (zeros until trained or loaded),
    exposed as the top.

    Caffe points the top at the parameter's memory; netforge copies it in forward and adds
    the top's gradient to the parameter's in backward, because parameter gradients
    accumulate here (iter_size) and test nets may rebind parameter arrays.
    """

    num_bottoms = 0
    num_tops = 1

    def setup(self, bottom_shapes):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        self.add_param(shape, pb.FillerParameter())  # constant 0, as Caffe's fresh blob

    def reshape(self, bottom_shapes):
        return [self.blobs[0].shape]

    def forward(self, bottoms, tops):
        self.xp.copyto(tops[0].data, self.blobs[0].data)

    def backward(self, tops, propagate_down, bottoms):
        if self.param_propagate_down[0]:
            self.blobs[0].diff += tops[0].diff


@register("Embed")
class EmbedLayer(Layer):
    """A lookup table: each input value (a whole number in [0, input_dim)) selects a row of
    the (input_dim, num_output) weights, plus the bias. Gradients go to the parameters only."""

    num_bottoms = 1
    num_tops = 1
    no_gradient_bottoms = (0,)

    def setup(self, bottom_shapes):
        p = self.param.embed_param
        if p.num_output <= 0:
            raise ConfigError(f"{self.label}: num_output must be positive")
        if p.input_dim <= 0:
            raise ConfigError(f"{self.label}: input_dim must be positive")
        self.add_param((p.input_dim, p.num_output), p.weight_filler)
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_param((p.num_output,), p.bias_filler)

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        count = 1
        for d in shape:
            count *= d
        self.declare_dict("ws", ops.embed_workspace_shapes(count))
        return [(*shape, self.blobs[0].shape[1])]

    def forward(self, bottoms, tops):
        b = self.blobs[1].data if self.bias_term else None
        try:
            ops.embed_forward(bottoms[0].data, self.blobs[0].data, b, tops[0].data, ws=self.ws)
        except ValueError as exc:
            raise DataError(f'{self.label}: bottom "{self.param.bottom[0]}": {exc} '
                            f"(input_dim {self.blobs[0].shape[0]})") from None

    def backward(self, tops, propagate_down, bottoms):
        dw = self.blobs[0].diff if self.param_propagate_down[0] else None
        db = None
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].diff
        ops.embed_backward(bottoms[0].data, tops[0].diff, dw, db, ws=self.ws)
