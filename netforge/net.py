"""Net: runs a compiled plan forward and backward; pycaffe-shaped API.

    net = Net("deploy.prototxt", phase="test", weights="w.caffemodel")
    out = net.forward(data=batch)       # output blob name -> array
    net.blobs["conv1"].data; net.params["conv1"][0].data
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from netforge import backend, config, weights
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, OutOfMemoryError, ShapeError
from netforge.graph import debug_info, fusion
from netforge.graph.compile import build_plan
from netforge.layers import python_layer
from netforge.layers.base import LayerContext
from netforge.ops.random import philox_key

log = logging.getLogger("netforge")


class Net:
    """A network built from a prototxt (path or NetParameter) for one phase.

    Args:
        net: path of a net prototxt, or a NetParameter.
        phase: "train" or "test" (case-insensitive).
        weights: optional .caffemodel / .caffemodel.h5 to copy weights from (by layer name).
        level, stages: NetState level and stages used to filter layers.
        dtype: float32 (default) or float64 (gradient checks).
        seed: seeds the generator that fills weights and the key of the counter-based
            streams of Dropout and stochastic pooling (``random_key`` sets that key alone;
            the solver passes one derived from random_seed).
        reuse_memory: for nets loaded only to predict: activations never alive together share
            memory (``netforge.graph.memory_plan``); backward is then refused, and after a forward
            only the outputs, inputs and ``keep_blobs`` hold their values.
        allow_python_layers: let this net's Python layers import their modules (None: the
            process setting, ``netforge.allow_python_layers()``); refused by default.
    """

    def __init__(self, net, phase: str = "test", weights: str | None = None, level: int = 0,
                 stages=(), *, dtype=np.float32, seed: int | None = None,
                 rng: np.random.Generator | None = None, base_dirs=(),
                 reuse_memory: bool = False, keep_blobs=(),
                 allow_python_layers: bool | None = None,
                 random_key: tuple[int, int] | None = None):
        if str(weights).lower() in ("train", "test") and str(phase).upper() not in config.PHASES:
            # pycaffe's legacy order: Net(prototxt, caffemodel, phase).
            phase, weights = weights, phase
        phase = str(phase).upper()
        if isinstance(net, (str, Path)):
            source = str(net)
            param = config.load_net_param(net)
            base_dirs = (Path(net).resolve().parent, *base_dirs)
        else:
            source = net.name or "net"
            param = net
            # The load-time validation pass, for nets built in code (NetSpec, solvers'
            # inline nets) as for files; on a copy, since the upgrade rewrites in place.
            checked = pb.NetParameter()
            checked.CopyFrom(net)
            config.validate_net(config.upgrade_net(checked, source), f'net "{source}"')
        state = config.make_state(phase, level, stages)
        # Caffe: the requested phase wins; level and stages from the file are merged in.
        merged = pb.NetState()
        merged.CopyFrom(param.state)
        merged.MergeFrom(state)
        merged.phase = state.phase
        self.source = source
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        if random_key is None:
            # From the seed, else from a copy of the generator (which it leaves untouched, so
            # the weights it fills do not change).
            random_key = philox_key(seed if seed is not None else
                                    int(copy.deepcopy(self.rng).integers(2**63)))
        self.ctx = LayerContext(phase, np.dtype(dtype), backend.array_module(), self.rng,
                                tuple(Path(b) for b in base_dirs), tuple(random_key))
        log.info("Initializing net from parameters (%s, phase %s)", source, phase)
        try:
            # upgrade -> filter by NetState -> the graph passes (netforge.graph.compile)
            with python_layer.allowing(allow_python_layers):
                filtered, self.plan = build_plan(param, merged, self.ctx, source)
        except MemoryError as exc:  # numpy's and CuPy's out-of-memory errors
            what = f'net "{param.name}"' if param.name else "the net"
            where = f"{source}: " if source not in (param.name, "net") else ""
            raise OutOfMemoryError(
                f"{where}not enough memory to set up {what} ({exc}); make the batch or the "
                "input smaller (batch_size, input shape)") from None
        self.phase = phase
        self.param = filtered
        self._steps = self.plan.steps
        self._loss_tops = self.plan.loss_tops
        self._source_shapes = self._current_source_shapes()
        # Caffe's per-layer magnitudes in the log (netforge.graph.debug_info); the solver turns
        # this on for display iterations when its own debug_info is set.
        self.debug_info = bool(param.debug_info)
        self._copied_layers: set[str] = set()
        self._loss_scalars = None  # 0-d device buffers of loss_array, made on first use
        if weights:
            for path in str(weights).split(","):
                self.copy_from(path)
        if reuse_memory:
            self.plan.share_memory(keep_blobs)
        # Everything the plan allocated moves into one arena (graph/arena.py); views this Net
        # keeps are rebuilt there too.
        self.plan.adopt_arena(holders=[self])

    # -- pycaffe-shaped views --------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def blobs(self) -> OrderedDict:
        return self.plan.blobs

    @property
    def params(self) -> OrderedDict:
        return self.plan.layer_params

    @property
    def layers(self) -> list:
        return [s.layer for s in self._steps]

    @property
    def layer_dict(self) -> OrderedDict:
        return OrderedDict((s.layer.name, s.layer) for s in self._steps)

    @property
    def inputs(self) -> list[str]:
        return list(self.plan.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self.plan.outputs)

    @property
    def learnable_params(self):
        return self.plan.learnable

    @property
    def _layer_names(self) -> list[str]:
        return [s.layer.name for s in self._steps]

    @property
    def top_names(self) -> OrderedDict:
        return OrderedDict((s.layer.name, list(s.top_names)) for s in self._steps)

    @property
    def bottom_names(self) -> OrderedDict:
        return OrderedDict((s.layer.name, list(s.bottom_names)) for s in self._steps)

    @property
    def blob_loss_weights(self) -> OrderedDict:
        weights = {id(top): w for top, w in self._loss_tops}
        return OrderedDict((name, weights.get(id(blob), 0.0)) for name, blob in self.blobs.items())

    # -- running ---------------------------------------------------------------------------
    def _index(self, layer_name: str | None, default: int) -> int:
        if layer_name is None:
            return default
        for i, step in enumerate(self._steps):
            if step.layer.name == layer_name:
                return i
        raise ConfigError(f'no layer named "{layer_name}" in net "{self.name}"')

    def forward(self, blobs=None, start: str | None = None, end: str | None = None,
                **inputs) -> dict:
        """Run layers start..end (layer names, inclusive); ``inputs`` (blob name -> array
        of the blob's shape) are copied into their blobs first.

        Returns output blob name (or the tops of ``end``), plus any names in ``blobs``, ->
        array (a view into the net, overwritten by the next forward).
        """
        for name, value in inputs.items():
            self.set_input(name, value)
        first = self._index(start, 0)
        last = self._index(end, len(self._steps) - 1)
        self.forward_range(first, last)
        names = self._steps[last].top_names if end is not None else self.plan.outputs
        self.plan.check_readable(blobs or ())
        names = list(names) + list(blobs or [])
        return {name: self.blobs[name].data for name in names}

    def forward_all(self, blobs=None, **inputs) -> dict:
        """Forward inputs of any number of samples N, a batch (the input blob's first
        dimension) at a time; the last batch is padded with zeros and the padding dropped.

        Returns output (plus ``blobs``) name -> host array of N rows (copies).
        """
        if not inputs:
            return {name: np.array(backend.to_host(v))
                    for name, v in self.forward(blobs=blobs).items()}
        arrays = {name: np.asarray(backend.to_host(v)) for name, v in inputs.items()}
        counts = {len(a) for a in arrays.values()}
        if len(counts) != 1:
            raise ShapeError(f"forward_all inputs differ in their number of samples: "
                             f"{ {name: len(a) for name, a in arrays.items()} }")
        total = counts.pop()
        batch = self.blobs[next(iter(arrays))].shape[0]
        pieces: dict[str, list] = {}
        for start in range(0, total, batch):
            feed = {}
            for name, array in arrays.items():
                chunk = array[start:start + batch]
                if len(chunk) < batch:  # pad the last batch, as pycaffe does
                    pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                feed[name] = chunk
            for name, value in self.forward(blobs=blobs, **feed).items():
                pieces.setdefault(name, []).append(np.array(backend.to_host(value)))
        return {name: np.concatenate(parts)[:total] for name, parts in pieces.items()}

    def set_input_arrays(self, data, labels, layer: str | None = None) -> None:
        """Hand arrays to a MemoryData layer (the first one, or ``layer``): ``data``
        (n, C, H, W) float32 and n ``labels``, n a multiple of its batch size."""
        for step in self._steps:
            if step.layer.type == "MemoryData" and layer in (None, step.layer.name):
                step.layer.set_input_arrays(data, labels)
                return
        which = f'named "{layer}"' if layer else "at all"
        raise ConfigError(f'net "{self.name}" has no MemoryData layer {which}; '
                          "set_input_arrays feeds MemoryData layers only")

    def set_input(self, name: str, value) -> None:
        if name not in self.blobs:
            raise ConfigError(f'no blob named "{name}" in net "{self.name}"')
        blob = self.blobs[name]
        value = np.asarray(backend.to_host(value))
        if value.shape != blob.shape:
            raise ShapeError(
                f'input "{name}" has shape {value.shape} but the net expects {blob.shape} '
                "(call net.reshape after changing the Input layer's shape)"
            )
        blob.data[...] = self.ctx.xp.asarray(value)

    def forward_range(self, first: int, last: int) -> float:
        """Forward layers first..last (inclusive); returns the weighted loss (read back from
        the device: the solver uses ``run_forward`` and ``loss_array`` instead)."""
        self.run_forward(first, last)
        return self.loss()

    def run_forward(self, first: int, last: int) -> None:
        """Forward layers first..last (inclusive); reads nothing back from the device."""
        if first and self.plan.memory is not None:
            self.plan.check_resume(first)
        if self._current_source_shapes() != self._source_shapes:
            # pycaffe's batch idiom: net.blobs["data"].reshape(5, C, H, W); net.forward().
            # Caffe reshapes every layer on each forward; a changed input must reach them all.
            self.reshape()
        if self.debug_info or not self.plan.fused:  # debug_info logs every layer
            for i in range(first, last + 1):
                self._forward_step(i)
        else:  # conv/BatchNorm + the in-place layers after them in one pass (graph.fusion)
            fusion.run_forward(self.plan.fused, self._steps, first, last, self._forward_step)

    def _forward_step(self, i: int) -> None:
        step = self._steps[i]
        if step.layer.dynamic_top_shapes:
            before = [top.shape for top in step.tops]
            step.layer.forward(step.bottoms, step.tops)
            if any(top.shape != shape for top, shape in zip(step.tops, before, strict=True)):
                self.plan.reshape(i + 1)  # e.g. Filter kept a different number of rows
        else:
            step.layer.forward(step.bottoms, step.tops)
        if self.debug_info:
            debug_info.emit(debug_info.forward_lines(step))

    def reshape(self) -> None:
        """Propagate changed input shapes through the net (pycaffe's ``net.reshape()``):
        ``net.blobs["data"].reshape(8, 3, 32, 32); net.reshape()``. A forward after an input
        blob changed shape does this by itself, as Caffe's does."""
        self.plan.reshape()
        self._source_shapes = self._current_source_shapes()

    def _current_source_shapes(self) -> list:
        """The shapes of the tops of layers without bottoms (Input, data layers): the ones a
        caller reshapes; everything else follows from them."""
        return [top.shape for step in self._steps if not step.bottoms for top in step.tops]

    def loss(self) -> float:
        """The weighted sum of the loss tops, as a Python float (a host read)."""
        return float(backend.to_host(self.loss_array()))

    def loss_array(self):
        """The weighted loss as a 0-d float64 array on the compute device (nothing read
        back): Σ w · sum(top), each top summed in its own dtype, as ``loss`` always did."""
        xp = self.ctx.xp
        if self._loss_scalars is None:
            self._loss_scalars = (xp.zeros((), dtype=xp.float64), xp.zeros((), dtype=xp.float64),
                                  [xp.zeros((), dtype=top.data.dtype) for top, _ in
                                   self._loss_tops])
        total, term, sums = self._loss_scalars
        total.fill(0)
        for (top, w), part in zip(self._loss_tops, sums, strict=True):
            xp.sum(top.data, out=part)
            xp.multiply(part, w, out=term, dtype=xp.float64)
            xp.add(total, term, out=total)
        return total

    def backward(self, diffs=None, start: str | None = None, end: str | None = None,
                 **top_diffs) -> dict:
        """Backpropagate from layer ``start`` (default: the last) down to ``end`` (default:
        the first). Weighted (loss) tops are seeded with their loss weight; ``top_diffs``
        (blob name -> array) set other tops' diffs, e.g. the outputs of a deploy net.

        Returns the diffs of the net inputs (or of ``end``'s bottoms), plus any names in
        ``diffs``, as views into the net.
        """
        for top, w in self._loss_tops:
            top.diff.fill(w)
        for name, value in top_diffs.items():
            if name not in self.blobs:
                raise ConfigError(f'no blob named "{name}" in net "{self.name}"')
            blob = self.blobs[name]
            value = np.asarray(backend.to_host(value))
            if value.shape != blob.shape:
                raise ShapeError(f'diff for "{name}" has shape {value.shape} but the blob has '
                                 f"{blob.shape}")
            blob.diff[...] = self.ctx.xp.asarray(value)
        first = self._index(end, 0)
        last = self._index(start, len(self._steps) - 1)
        self.backward_range(first, last)
        names = self._steps[first].bottom_names if end is not None else self.plan.inputs
        names = list(names) + list(diffs or [])
        return {name: self.blobs[name].diff for name in names}

    def backward_range(self, first: int, last: int) -> None:
        """Backward layers last..first (inclusive, by index), those that need it."""
        if self.plan.memory is not None:
            raise ConfigError(f'net "{self.name}" was built with reuse_memory=True, which '
                              "runs forward only; build it without to run backward")
        for step in reversed(self._steps[first:last + 1]):
            if step.need_backward:
                step.layer.backward(step.tops, step.propagate_down, step.bottoms)
                if self.debug_info:
                    debug_info.emit(debug_info.backward_lines(step))

    def forward_backward(self) -> float:
        loss = self.forward_range(0, len(self._steps) - 1)
        self.backward()
        return loss

    def clear_param_diffs(self) -> None:
        for p in self.plan.learnable:
            p.blob.diff.fill(0)

    # -- weights ---------------------------------------------------------------------------
    def copy_from(self, path) -> None:
        """Copy weights by layer name from a .caffemodel / .caffemodel.h5 file."""
        self._copied_layers |= weights.copy_into(self, path)

    @property
    def layers_without_weights(self) -> list[str]:
        """Layers with parameters that no ``copy_from``/``weights`` file supplied: they hold
        their fillers' initial values (Caffe copies by name and says nothing)."""
        return weights.layers_lacking_weights(self, self._copied_layers)

    def save(self, path) -> None:
        weights.save_caffemodel(self, path)

    def save_hdf5(self, path) -> None:
        weights.save_hdf5(self, path)

    def to_proto(self, write_diff: bool = False) -> pb.NetParameter:
        return weights.net_to_proto(self, write_diff)

    def share_trained_layers(self, other: Net) -> None:
        """Point this net's params at ``other``'s, by layer name (test nets share the train
        net's weights, BatchNorm statistics included, without copying)."""
        for name, mine in self.params.items():
            theirs = other.params.get(name)
            if theirs is None:
                continue
            for k, blob in enumerate(mine):
                if blob.shape != theirs[k].shape:
                    raise ShapeError(
                        f'layer "{name}" param {k}: shape {blob.shape} here but '
                        f"{theirs[k].shape} in the train net"
                    )
                blob.data = theirs[k].data

    def close(self) -> None:
        for step in self._steps:
            close = getattr(step.layer, "close", None)
            if close is not None:
                close()
