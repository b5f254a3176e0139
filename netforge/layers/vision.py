"""Spatial layers: Convolution, Deconvolution, Im2col, Pooling, SPP, Crop.

The arithmetic lives in ``netforge.ops`` (``vision``, ``deconv``, ``pooling``, ``spp``,
``crop``); these classes map Caffe's parameters onto kernel calls.
"""

from __future__ import annotations

from math import prod

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError
from netforge.layers.base import Layer, ScratchBuffer, scratch_in
from netforge.layers.registry import register
from netforge.ops import crop, deconv, engine, pooling, spp
from netforge.ops import stochastic_pooling as stochastic
from netforge.ops import vision as ops


def _spatial(param, name: str, stem: str, default: int, label: str) -> tuple[int, int]:
    """(h, w) from Caffe's repeated ``name`` (none, one, or one per axis) or ``stem_h/_w``."""
    h_field, w_field = f"{stem}_h", f"{stem}_w"
    has_h, has_w = param.HasField(h_field), param.HasField(w_field)
    values = list(getattr(param, name))
    if has_h or has_w:
        if not (has_h and has_w):
            raise ConfigError(f"{label}: give both {h_field} and {w_field}, or neither")
        if values:
            raise ConfigError(f"{label}: give either {name} or {h_field}/{w_field}, not both")
        return int(getattr(param, h_field)), int(getattr(param, w_field))
    if not values:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise ConfigError(f"{label}: {name} has {len(values)} values; 2-D layers take 1 or 2")


def _conv_window(p, label: str) -> tuple[tuple[int, int], ...]:
    """(kernel, pad, stride, dilation) as (h, w) pairs from a ConvolutionParameter."""
    if p.axis != 1:
        raise ConfigError(f"{label}: only axis 1 (channels) is supported, got {p.axis}")
    if not p.kernel_size and not p.HasField("kernel_h"):
        raise ConfigError(f"{label}: kernel_size (or kernel_h and kernel_w) is required")
    kernel = _spatial(p, "kernel_size", "kernel", 0, label)
    pad = _spatial(p, "pad", "pad", 0, label)
    stride = _spatial(p, "stride", "stride", 1, label)
    if p.dilation and len(p.dilation) > 2:
        raise ConfigError(f"{label}: dilation takes 1 or 2 values")
    dil = list(p.dilation) or [1]
    dilation = (int(dil[0]), int(dil[-1]))
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
        raise ConfigError(f"{label}: kernel, stride and dilation must be positive")
    return kernel, pad, stride, dilation


def _conv_output_hw(shape: tuple[int, ...], kernel, pad, stride, dilation) -> tuple[int, int]:
    """(OH, OW) of a convolution window over the (N, C, H, W) ``shape``."""
    return tuple(ops.conv_output_size(shape[2 + i], kernel[i], pad[i], stride[i], dilation[i])
                 for i in (0, 1))


def _four_d(layer: Layer, shape: tuple[int, ...], j: int = 0) -> None:
    if len(shape) != 4:
        raise layer.shape_error(f'bottom "{layer.param.bottom[j]}" must be 4-D (N, C, H, W), '
                                f"got shape {shape}")


@register("Convolution")
class ConvolutionLayer(Layer):
    """y = w * x + b over (N, C, H, W); weights (O, C/group, kh, kw), bias (O,).

    Several bottoms give as many tops, all computed with the same weights.
    """

    min_bottoms = 1
    min_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        label = self.label
        if len(self.param.top) != len(self.param.bottom):
            raise ConfigError(f"{label} needs one top per bottom")
        self.kernel, self.pad, self.stride, self.dilation = _conv_window(p, label)
        self.group = int(p.group)
        if self.group <= 0:
            raise ConfigError(f"{label}: group must be positive")
        if p.num_output <= 0:
            raise ConfigError(f"{label}: num_output must be positive")
        shape = bottom_shapes[0]
        _four_d(self, shape)
        channels = shape[1]
        if channels % self.group or p.num_output % self.group:
            raise self.shape_error(
                f"channels ({channels}) and num_output ({p.num_output}) must both be "
                f"divisible by group ({self.group})"
            )
        self.add_param(self._weight_shape(channels, p.num_output), p.weight_filler)
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_param((p.num_output,), p.bias_filler)

    # What differs between convolution and deconvolution: weight layout, shapes, workspace.
    def _weight_shape(self, channels: int, num_output: int) -> tuple[int, ...]:
        return (num_output, channels // self.group, *self.kernel)

    def _bottom_channels(self) -> int:
        """The channel count the weights expect of every bottom."""
        return self.blobs[0].shape[1] * self.group

    def _top_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        oh, ow = _conv_output_hw(shape, self.kernel, self.pad, self.stride, self.dilation)
        return (shape[0], self.blobs[0].shape[0], oh, ow)

    def _workspace_spec(self, shape: tuple[int, ...]):
        return ops.conv_workspace_shapes(shape, self.blobs[0].shape, **self._geometry(),
                                         dtype=self.dtype)

    def reshape(self, bottom_shapes):
        w_shape = self.blobs[0].shape
        tops = []
        workspaces = []
        for j, shape in enumerate(bottom_shapes):
            _four_d(self, shape, j)
            if shape[1] != self._bottom_channels():
                raise self.shape_error(
                    f'bottom "{self.param.bottom[j]}" has shape {shape} but the weights '
                    f"{w_shape} (group {self.group}) expect {self._bottom_channels()} channels"
                )
            top = self._top_shape(shape)
            if top[2] <= 0 or top[3] <= 0:
                raise self.shape_error(
                    f'bottom "{self.param.bottom[j]}" of shape {shape} gives an empty output '
                    f"{top} (kernel {self.kernel}, pad {self.pad}, stride {self.stride}, "
                    f"dilation {self.dilation})")
            tops.append(top)
            workspaces.append(self._batch_parts(shape))
        self.declare_layout("workspaces", workspaces)
        return tops

    def _batch_parts(self, shape: tuple[int, ...]) -> list[tuple[int, int, dict]]:
        """(first image, end, workspace) per slice of the batch (``netforge.ops.engine``);
        deconvolution runs unsplit, on one workspace."""
        if self.type == "Convolution":
            return engine.conv_layout(shape, self.blobs[0].shape, self._geometry(), self.dtype,
                                      self.xp, bias=self.bias_term)
        return [(0, shape[0], self._workspace_spec(shape))]

    def _geometry(self) -> dict:
        return {"stride": self.stride, "pad": self.pad, "dilation": self.dilation,
                "group": self.group}

    # Whether backward reuses the columns forward built (reuse_col: no second im2col, but a
    # private column buffer per layer) or rebuilds them in shared scratch. The solver's
    # training-memory plan turns it off by default (graph/train_memory.recompute_columns).
    keep_columns = True

    def kept_for_backward(self, ws: dict) -> tuple[str, ...]:
        """The workspace arrays backward reads (reuse_col: the columns forward built)."""
        return ("col",) if self.keep_columns else ()

    def scratch_buffers(self) -> list[ScratchBuffer]:
        """Every workspace array of every batch slice: all hold nothing from one call to the
        next but the columns, which backward reuses (reuse_col) and which are shared only
        when no backward runs."""
        return [buffer for parts in self.workspaces for _, _, ws in parts
                for buffer in scratch_in(ws, kept_for_backward=self.kept_for_backward(ws))]

    def forward(self, bottoms, tops, *, epilogue=None):
        """``epilogue``: the in-place layers after this one, fused in by the graph
        (``netforge.graph.fusion``; a ``netforge.ops.fused.ChannelEpilogue``)."""
        w = self.blobs[0].data
        b = self.blobs[1].data if self.bias_term else None
        for bottom, top, parts in zip(bottoms, tops, self.workspaces, strict=True):
            engine.conv_forward(parts, bottom.data, w, b, top.data, epilogue=epilogue,
                                **self._geometry())

    def _param_diffs(self):
        dw = self.blobs[0].diff if self.param_propagate_down[0] else None
        db = None
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].diff
        return dw, db

    def backward(self, tops, propagate_down, bottoms):
        w = self.blobs[0].data
        dw, db = self._param_diffs()
        # Each bottom's workspaces still hold the columns its forward built (reuse_col),
        # unless keep_columns is off: then backward rebuilds them.
        for j, (bottom, top, parts) in enumerate(zip(bottoms, tops, self.workspaces,
                                                     strict=True)):
            dx = bottom.diff if propagate_down[j] else None
            engine.conv_backward(parts, top.diff, bottom.data, w, dx=dx, dw=dw, db=db,
                                 reuse_col=self.keep_columns, **self._geometry())

    def backward_reads(self, bottoms, tops):
        """x, for the weight gradient (when the columns are rebuilt, or a 1x1 needs none)."""
        return tuple(range(len(bottoms))), ()


@register("Deconvolution")
class DeconvolutionLayer(ConvolutionLayer):
    """The transpose of convolution (upsampling): weights (C, num_output/group, kh, kw) as
    Caffe stores them, bias (num_output,); output size s(in - 1) + d(k - 1) + 1 - 2p.

    With a ``bilinear`` weight filler, kernel 2f - f % 2, stride f, pad ceil((f - 1) / 2),
    group = channels = num_output, it is FCN's fixed bilinear upsampling by a factor f.
    """

    def _weight_shape(self, channels: int, num_output: int) -> tuple[int, ...]:
        return (channels, num_output // self.group, *self.kernel)

    def _bottom_channels(self) -> int:
        return self.blobs[0].shape[0]

    def kept_for_backward(self, ws: dict) -> tuple[str, ...]:
        # The deconvolution kernels' workspaces are not audited for sharing between calls:
        # all count as kept for backward, shared only in nets that never run backward.
        return tuple(ws)

    def _top_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return deconv.deconv_output_shape(shape, self.blobs[0].shape, **self._geometry())

    def _workspace_spec(self, shape: tuple[int, ...]):
        return deconv.deconv_workspace_shapes(shape, self.blobs[0].shape, **self._geometry(),
                                              dtype=self.dtype)

    def forward(self, bottoms, tops):
        w = self.blobs[0].data
        b = self.blobs[1].data if self.bias_term else None
        for bottom, top, parts in zip(bottoms, tops, self.workspaces, strict=True):
            deconv.deconv_forward(bottom.data, w, b, top.data, ws=parts[0][2],
                                  **self._geometry())

    def backward(self, tops, propagate_down, bottoms):
        w = self.blobs[0]
        dw, db = self._param_diffs()
        for j, (bottom, top, parts) in enumerate(zip(bottoms, tops, self.workspaces,
                                                     strict=True)):
            dx = bottom.diff if propagate_down[j] else None
            deconv.deconv_backward(top.diff, bottom.data, w.data, dx=dx, dw=dw, db=db,
                                   ws=parts[0][2], **self._geometry())


@register("Im2col")
class Im2colLayer(Layer):
    """Caffe's im2col as a layer: x (N, C, H, W) -> (N, C*kh*kw, OH, OW), rows per image in
    (c, i, j) order; the window comes from ``convolution_param`` (num_output is unused)."""

    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom_shapes):
        self.kernel, self.pad, self.stride, self.dilation = _conv_window(
            self.param.convolution_param, self.label)

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        _four_d(self, shape)
        oh, ow = _conv_output_hw(shape, self.kernel, self.pad, self.stride, self.dilation)
        if oh <= 0 or ow <= 0:
            raise self.shape_error(f"input {shape} is smaller than the kernel {self.kernel}")
        return [(shape[0], shape[1] * self.kernel[0] * self.kernel[1], oh, ow)]

    def _geometry(self) -> dict:
        return {"kernel": self.kernel, "pad": self.pad, "stride": self.stride,
                "dilation": self.dilation}

    def forward(self, bottoms, tops):
        ops.im2col_images(bottoms[0].data, tops[0].data, **self._geometry())

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            ops.col2im_images(tops[0].diff, bottoms[0].diff, **self._geometry())


@register("Pooling")
class PoolingLayer(Layer):
    """MAX, AVE or STOCHASTIC pooling with Caffe's ceil-mode output size and border rules.

    STOCHASTIC samples one pixel per window with probability proportional to its value in
    TRAIN (from the net's seeded generator), and takes the probability-weighted average
    sum(x^2) / sum(x) in TEST; Caffe runs it on GPU only, netforge on both.
    """

    num_bottoms = 1
    min_tops = 1
    max_tops = 2  # optional second top: the argmax mask (MAX only)

    def setup(self, bottom_shapes):
        p = self.param.pooling_param
        label = self.label
        self.method = p.pool
        self.stochastic = self.method == pb.PoolingParameter.STOCHASTIC
        if self.stochastic:
            self.random_stream()
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if p.kernel_size or p.HasField("kernel_h"):
                raise ConfigError(f"{label}: global_pooling takes no kernel size")
            if p.pad or p.pad_h or p.pad_w or p.stride != 1 or p.stride_h or p.stride_w:
                raise ConfigError(f"{label}: global_pooling takes no pad or stride")
        elif not p.HasField("kernel_size") and not p.HasField("kernel_h"):
            raise ConfigError(f"{label}: kernel_size (or kernel_h and kernel_w) is required")
        self.kernel = (0, 0) if self.global_pooling else _pool_pair(p, "kernel", "kernel_size",
                                                                      label)
        self.stride = _pool_pair(p, "stride", "stride", label)
        self.pad = _pool_pair(p, "pad", "pad", label)
        if (self.pad[0] or self.pad[1]) and self.method not in (pb.PoolingParameter.MAX,
                                                                 pb.PoolingParameter.AVE):
            raise ConfigError(f"{label}: padding is implemented only for MAX and AVE pooling")
        if not self.global_pooling and (self.pad[0] >= self.kernel[0]
                                        or self.pad[1] >= self.kernel[1]):
            raise ConfigError(f"{label}: pad {self.pad} must be smaller than kernel {self.kernel}")
        self.ceil_mode = p.round_mode == pb.PoolingParameter.CEIL
        if len(self.param.top) == 2 and self.method != pb.PoolingParameter.MAX:
            raise ConfigError(f"{label}: a second (mask) top needs MAX pooling")

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        _four_d(self, shape)
        if self.global_pooling:
            self.kernel = (shape[2], shape[3])
        oh = ops.pool_output_size(shape[2], self.kernel[0], self.pad[0], self.stride[0],
                                  self.ceil_mode)
        ow = ops.pool_output_size(shape[3], self.kernel[1], self.pad[1], self.stride[1],
                                  self.ceil_mode)
        if oh <= 0 or ow <= 0:
            raise self.shape_error(f"input {shape} is smaller than the kernel {self.kernel}")
        top = (shape[0], shape[1], oh, ow)
        if self.method == pb.PoolingParameter.MAX:
            self.declare("argmax", top, self.xp.int32)
        elif self.stochastic:
            self.declare("sample", top, self.xp.int32)  # TRAIN's sampled pixels
            self.random.reserve(prod(top))
        # MAX and AVE run each slice of the batch on its own core (netforge.ops.engine), with
        # its own workspace; STOCHASTIC draws in one sequence, unsplit.
        self.declare_layout("parts", engine.slice_layout(
            shape[0], lambda n: self._workspace_spec((n, *shape[1:]), (n, *top[1:])), self.xp,
            split=not self.stochastic))
        return [top] * len(self.param.top or [None])

    @property
    def ws(self) -> dict:
        """The first slice's workspace: the whole batch's when it runs unsplit."""
        return self.parts[0][2]

    def _workspace_spec(self, shape, top):
        window = {"kernel": self.kernel, "stride": self.stride}
        if self.method == pb.PoolingParameter.MAX:
            return pooling.max_pool_workspace_shapes(shape, top, pad=self.pad,
                                                     index_dtype=self.xp.int32,
                                                     dtype=self.dtype, **window)
        if self.stochastic:
            return stochastic.stochastic_pool_workspace_shapes(shape, top, dtype=self.dtype,
                                                               index_dtype=self.xp.int32,
                                                               **window)
        return pooling.ave_pool_workspace_shapes(shape, top, pad=self.pad, dtype=self.dtype,
                                                 **window)

    def _geometry(self) -> dict:
        return {"kernel": self.kernel, "stride": self.stride, "pad": self.pad}

    def scratch_buffers(self) -> list[ScratchBuffer]:
        # Pure scratch in forward and backward alike; the argmax and samples live outside.
        return [buffer for _, _, ws in self.parts for buffer in scratch_in(ws)]

    def _run_parts(self, kernel, *arrays, planes: bool = False) -> None:
        """``kernel(*slices, ws=...)`` on each batch slice of ``arrays`` (None passes);
        ``planes``: a batch of one may split by channels (forward only)."""
        run = engine.run_planes if planes else engine.run_slices
        run(self.parts, kernel, *arrays, **self._geometry())

    def forward(self, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        if self.method == pb.PoolingParameter.MAX:
            # The argmax is only for backward and the mask top: a net that never runs this
            # layer's backward (predict) skips computing it.
            want_argmax = self.need_backward or len(tops) == 2
            self._run_parts(pooling.max_pool_forward, x, y,
                            self.argmax if want_argmax else None, planes=True)
            if len(tops) == 2:
                tops[1].data[...] = self.argmax
        elif self.stochastic:
            window = {"kernel": self.kernel, "stride": self.stride, "ws": self.ws}
            if self.phase == "TRAIN":
                stochastic.stochastic_pool_forward_train(x, y, self.sample, rng=self.random,
                                                         **window)
            else:
                stochastic.stochastic_pool_forward_test(x, y, **window)
        else:
            self._run_parts(pooling.ave_pool_forward, x, y, planes=True)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        if self.method == pb.PoolingParameter.MAX:
            self._run_parts(pooling.max_pool_backward, dy, self.argmax, dx)
        elif self.stochastic:
            window = {"kernel": self.kernel, "stride": self.stride, "ws": self.ws}
            if self.phase == "TRAIN":
                stochastic.stochastic_pool_backward_train(dy, self.sample, dx, **window)
            else:
                stochastic.stochastic_pool_backward_test(dy, bottoms[0].data, dx, **window)
        else:
            self._run_parts(pooling.ave_pool_backward, dy, dx)

    def backward_reads(self, bottoms, tops):
        """MAX: its own argmax; AVE: nothing; stochastic at test: the bottom."""
        if self.stochastic and self.phase != "TRAIN":
            return (0,), ()
        return (), ()


def _pool_pair(p, stem: str, field: str, label: str) -> tuple[int, int]:
    """Pooling spells sizes as one ``field`` (proto default applies) or ``stem_h``/``stem_w``."""
    h_name, w_name = f"{stem}_h", f"{stem}_w"
    if p.HasField(h_name) or p.HasField(w_name):
        if not (p.HasField(h_name) and p.HasField(w_name)):
            raise ConfigError(f"{label}: give both {h_name} and {w_name}, or neither")
        return int(getattr(p, h_name)), int(getattr(p, w_name))
    value = int(getattr(p, field))
    return value, value


_SPP_METHODS = {pb.SPPParameter.MAX: "MAX", pb.SPPParameter.AVE: "AVE",
                pb.SPPParameter.STOCHASTIC: "STOCHASTIC"}


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: levels 0 .. pyramid_height-1 pool the image into 2^l x 2^l
    bins, flattened and concatenated (N, sum_l C*4^l); with one level, (N, C, 1, 1).

    STOCHASTIC follows the layer's phase (Caffe's inner pooling layers always sample).
    """

    num_bottoms = 1
    num_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.spp_param
        self.pyramid_height = int(p.pyramid_height)
        if self.pyramid_height < 1:
            raise ConfigError(f"{self.label}: pyramid_height must be at least 1, "
                              f"got {self.pyramid_height}")
        self.method = _SPP_METHODS[p.pool]
        self.random_stream()

    def reshape(self, bottom_shapes):
        shape = bottom_shapes[0]
        _four_d(self, shape)
        try:
            self.levels = spp.spp_levels(shape[2], shape[3], self.pyramid_height)
            specs = spp.spp_workspace_shapes(shape, self.levels, self.method, dtype=self.dtype,
                                             index_dtype=self.xp.int32)
        except ValueError as err:
            raise self.shape_error(f'bottom "{self.param.bottom[0]}" {shape}: {err}') from None
        self.declare_layout("ws", list(specs))
        top = spp.spp_output_shape(shape, self.levels)
        self.random.reserve(top[0] * top[1])
        return [top]

    def forward(self, bottoms, tops):
        spp.spp_forward(bottoms[0].data, tops[0].data, levels=self.levels, method=self.method,
                        ws=self.ws, rng=self.random, train=self.phase == "TRAIN")

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            spp.spp_backward(tops[0].diff, bottoms[0].data, bottoms[0].diff, levels=self.levels,
                             method=self.method, ws=self.ws, train=self.phase == "TRAIN")


@register("Crop")
class CropLayer(Layer):
    """Crop bottom 0 to bottom 1's shape on the axes from ``axis`` (default 2) on, starting
    at ``offset`` (one value for all those axes, or one per axis; default 0). Bottom 1 only
    gives the shape and gets no gradient."""

    num_bottoms = 2
    num_tops = 1
    no_gradient_bottoms = (1,)

    def setup(self, bottom_shapes):
        p = self.param.crop_param
        self.axis = int(p.axis)
        self.offsets = [int(v) for v in p.offset]

    def reshape(self, bottom_shapes):
        shape, ref = bottom_shapes
        axis = self.axis + len(shape) if self.axis < 0 else self.axis
        try:
            self.window = crop.crop_window(shape, ref, axis, self.offsets)
        except ValueError as err:
            raise self.shape_error(
                f'cannot crop bottom "{self.param.bottom[0]}" {tuple(shape)} to bottom '
                f'"{self.param.bottom[1]}" {tuple(ref)} from axis {self.axis}: {err}') from None
        return [tuple(s.stop - s.start for s in self.window)]

    def forward(self, bottoms, tops):
        crop.crop_forward(bottoms[0].data, tops[0].data, self.window)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            crop.crop_backward(tops[0].diff, bottoms[0].diff, self.window)
