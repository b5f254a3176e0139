"""Spatial layers: Convolution, Pooling. The arithmetic lives in ``netforge.ops.vision``."""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError
from netforge.layers.base import Layer
from netforge.layers.registry import register
from netforge.ops import pooling
from netforge.ops import vision as ops
from netforge.ops._xp import allocate


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
        if p.axis != 1:
            raise ConfigError(f"{label}: only axis 1 (channels) is supported, got {p.axis}")
        if not p.kernel_size and not p.HasField("kernel_h"):
            raise ConfigError(f"{label}: kernel_size (or kernel_h and kernel_w) is required")
        self.kernel = _spatial(p, "kernel_size", "kernel", 0, label)
        self.pad = _spatial(p, "pad", "pad", 0, label)
        self.stride = _spatial(p, "stride", "stride", 1, label)
        if p.dilation and len(p.dilation) > 2:
            raise ConfigError(f"{label}: dilation takes 1 or 2 values")
        dil = list(p.dilation) or [1]
        self.dilation = (int(dil[0]), int(dil[-1]))
        self.group = int(p.group)
        if min(self.kernel) <= 0 or min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise ConfigError(f"{label}: kernel, stride and dilation must be positive")
        if p.num_output <= 0:
            raise ConfigError(f"{label}: num_output must be positive")
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.shape_error(f'bottom "{self.param.bottom[0]}" must be 4-D (N, C, H, W), '
                                   f"got shape {shape}")
        channels = shape[1]
        if channels % self.group or p.num_output % self.group:
            raise self.shape_error(
                f"channels ({channels}) and num_output ({p.num_output}) must both be "
                f"divisible by group ({self.group})"
            )
        self.add_param((p.num_output, channels // self.group, *self.kernel), p.weight_filler)
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_param((p.num_output,), p.bias_filler)

    def reshape(self, bottom_shapes):
        w_shape = self.blobs[0].shape
        tops = []
        self.workspaces = []
        for j, shape in enumerate(bottom_shapes):
            if len(shape) != 4 or shape[1] != w_shape[1] * self.group:
                raise self.shape_error(
                    f'bottom "{self.param.bottom[j]}" has shape {shape} but the weights '
                    f"{w_shape} (group {self.group}) expect {w_shape[1] * self.group} channels"
                )
            oh = ops.conv_output_size(shape[2], self.kernel[0], self.pad[0], self.stride[0],
                                      self.dilation[0])
            ow = ops.conv_output_size(shape[3], self.kernel[1], self.pad[1], self.stride[1],
                                      self.dilation[1])
            if oh <= 0 or ow <= 0:
                raise self.shape_error(f"input {shape} is smaller than the kernel {self.kernel}")
            tops.append((shape[0], w_shape[0], oh, ow))
            spec = ops.conv_workspace_shapes(shape, w_shape, **self._geometry(), dtype=self.dtype)
            self.workspaces.append(allocate(spec, self.xp))
        return tops

    def _geometry(self) -> dict:
        return {"stride": self.stride, "pad": self.pad, "dilation": self.dilation,
                "group": self.group}

    def forward(self, bottoms, tops):
        w = self.blobs[0].data
        b = self.blobs[1].data if self.bias_term else None
        for bottom, top, ws in zip(bottoms, tops, self.workspaces, strict=True):
            ops.conv_forward(bottom.data, w, b, top.data, ws=ws, **self._geometry())

    def backward(self, tops, propagate_down, bottoms):
        w = self.blobs[0]
        dw = w.diff if self.param_propagate_down[0] else None
        db = None
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].diff
        # Only the last bottom's columns are still in its workspace from forward.
        for j, (bottom, top, ws) in enumerate(zip(bottoms, tops, self.workspaces, strict=True)):
            dx = bottom.diff if propagate_down[j] else None
            ops.conv_backward(top.diff, bottom.data, w.data, dx=dx, dw=dw, db=db, ws=ws,
                              reuse_col=True, **self._geometry())


@register("Pooling")
class PoolingLayer(Layer):
    """MAX or AVE pooling with Caffe's ceil-mode output size and border rules."""

    num_bottoms = 1
    min_tops = 1
    max_tops = 2  # optional second top: the argmax mask (MAX only)

    def setup(self, bottom_shapes):
        p = self.param.pooling_param
        label = self.label
        self.method = p.pool
        if self.method == pb.PoolingParameter.STOCHASTIC:
            raise ConfigError(f"{label}: STOCHASTIC pooling is not supported on CPU yet")
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
        if len(shape) != 4:
            raise self.shape_error(f'bottom "{self.param.bottom[0]}" must be 4-D (N, C, H, W), '
                                   f"got shape {shape}")
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
            self.argmax = self.xp.empty(top, dtype=self.xp.int32)
            spec = pooling.max_pool_workspace_shapes(shape, top, index_dtype=self.xp.int32)
        else:
            spec = pooling.ave_pool_workspace_shapes(shape, top, dtype=self.dtype)
        self.ws = allocate(spec, self.xp)
        return [top] * len(self.param.top or [None])

    def _geometry(self) -> dict:
        return {"kernel": self.kernel, "stride": self.stride, "pad": self.pad, "ws": self.ws}

    def forward(self, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        if self.method == pb.PoolingParameter.MAX:
            pooling.max_pool_forward(x, y, self.argmax, **self._geometry())
            if len(tops) == 2:
                tops[1].data[...] = self.argmax
        else:
            pooling.ave_pool_forward(x, y, **self._geometry())

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        if self.method == pb.PoolingParameter.MAX:
            pooling.max_pool_backward(dy, self.argmax, dx, **self._geometry())
        else:
            pooling.ave_pool_backward(dy, dx, **self._geometry())


def _pool_pair(p, stem: str, field: str, label: str) -> tuple[int, int]:
    """Pooling spells sizes as one ``field`` (proto default applies) or ``stem_h``/``stem_w``."""
    h_name, w_name = f"{stem}_h", f"{stem}_w"
    if p.HasField(h_name) or p.HasField(w_name):
        if not (p.HasField(h_name) and p.HasField(w_name)):
            raise ConfigError(f"{label}: give both {h_name} and {w_name}, or neither")
        return int(getattr(p, h_name)), int(getattr(p, w_name))
    value = int(getattr(p, field))
    return value, value
