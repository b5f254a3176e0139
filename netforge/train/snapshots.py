"""Snapshots: ``<prefix>_iter_<N>.caffemodel`` + ``.solverstate`` (or their ``.h5`` forms).

Both files are written atomically (temporary name, then rename), weights first, so a crash
never leaves a truncated file under a final name and a state never points at missing weights.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from netforge import backend, config, weights
from netforge import netforge_pb2 as pb
from netforge.data.records import array_to_blobproto, blobproto_to_array
from netforge.errors import ConfigError, DataError, DivergenceError, ShapeError
from netforge.files import atomic_path, atomic_write_bytes
from netforge.train import divergence
from netforge.train.lr_policies import multistep_current_step
from netforge.train.pruning import ParamMasks
from netforge.train.weight_sharing import ParamClusters

log = logging.getLogger("netforge")


def snapshot_prefix(solver_param, solver_path) -> Path:
    """Caffe's rule: unset ⇒ the solver file without extension; a directory ⇒ dir/stem."""
    prefix = solver_param.snapshot_prefix
    stem = Path(solver_path).with_suffix("").name if solver_path else "netforge"
    if not prefix:
        return Path(solver_path).with_suffix("") if solver_path else Path(stem)
    path = Path(prefix)
    if prefix.endswith("/") or path.is_dir():
        return path / stem
    return path


def check_prefix_writable(prefix: Path, where) -> None:
    """Refuse, before training starts, a snapshot_prefix whose folder cannot be made or
    written (a regular file on the way, no permission), rather than failing at the first
    snapshot hours later."""
    folder = Path(prefix).parent.absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{where}: snapshot_prefix {prefix}: {existing} is a file, not a "
                          "folder, so no snapshot can be written there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: snapshot_prefix {prefix}: {existing} is not writable")


class SnapshotWriter:
    def __init__(self, solver):
        self.solver = solver
        self.prefix = snapshot_prefix(solver.param, solver.path)
        check_prefix_writable(self.prefix, solver.path or "solver")
        self.hdf5 = solver.param.snapshot_format == pb.SolverParameter.HDF5
        self.last: Path | None = None  # the newest complete snapshot's weights (or resumed)

    def filename(self, extension: str) -> Path:
        return Path(f"{self.prefix}_iter_{self.solver.iter}{extension}")

    def write(self) -> tuple[Path, Path]:
        solver = self.solver
        bad = divergence.non_finite_weights(solver.net)
        if bad:
            kept = f"; the last good snapshot is {self.last}" if self.last else ""
            raise DivergenceError(f"training diverged by iteration {solver.iter}: {bad}, so no "
                                  f"snapshot was written{kept}")
        diff = solver.param.snapshot_diff
        if self.hdf5:
            model = self.filename(".caffemodel.h5")
            log.info("Snapshotting to HDF5 file %s", model)
            weights.save_hdf5(solver.net, model, diff)
        else:
            model = self.filename(".caffemodel")
            log.info("Snapshotting to binary proto file %s", model)
            weights.save_caffemodel(solver.net, model, diff)
        state_path = self.filename(".solverstate.h5" if self.hdf5 else ".solverstate")
        history = [h for slot in solver.rule.history for h in slot]
        current_step = multistep_current_step(solver.param, solver.iter)
        extra = json.dumps(_resume_state(solver))
        masks = solver.masks.to_protos() if getattr(solver, "masks", None) else []
        clusters = solver.clusters.to_protos() if getattr(solver, "clusters", None) else []
        if self.hdf5:
            log.info("Snapshotting solver state to HDF5 file %s", state_path)
            _write_state_hdf5(state_path, solver.iter, str(model), current_step, history, extra,
                              masks, clusters)
        else:
            log.info("Snapshotting solver state to binary proto file %s", state_path)
            state = pb.SolverState(iter=solver.iter, learned_net=str(model),
                                   current_step=current_step, resume_state=extra,
                                   pruning_mask=masks, weight_sharing=clusters)
            for h in history:
                state.history.add().CopyFrom(array_to_blobproto(backend.to_host(h)))
            atomic_write_bytes(state_path, state.SerializeToString())
        self.last = model
        return model, state_path


def _resume_state(solver) -> dict:
    """What Caffe's solverstate lacks for an exact resume: generators and data cursors."""
    nets = [solver.net, *solver.test_nets]
    layers, streams = {}, {}
    for i, net in enumerate(nets):
        for layer in net.layers:
            get_state = getattr(layer, "get_state", None)
            if get_state is not None:
                layers[f"{i}/{layer.name}"] = get_state()
            stream = getattr(layer, "random", None)
            if stream is not None:  # a counter-based stream: key and draws (ops/random.py)
                streams[f"{i}/{layer.name}"] = stream.get_state()
    return {
        "rng": [net.rng.bit_generator.state for net in nets],
        "layers": layers,
        "random": streams,
    }


def _apply_resume_state(solver, text: str) -> None:
    if not text:
        return
    state = json.loads(text)
    nets = [solver.net, *solver.test_nets]
    for net, rng_state in zip(nets, state.get("rng", []), strict=False):
        net.rng.bit_generator.state = rng_state
    for i, net in enumerate(nets):
        for layer in net.layers:
            saved = state.get("layers", {}).get(f"{i}/{layer.name}")
            if saved is not None and hasattr(layer, "set_state"):
                layer.set_state(saved)
            stream = state.get("random", {}).get(f"{i}/{layer.name}")
            if stream is not None and getattr(layer, "random", None) is not None:
                layer.random.set_state(stream)


def _write_state_hdf5(path, iteration, model, current_step, history, extra, masks=(),
                      clusters=()) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("iter", data=np.int32(iteration))
            handle.create_dataset("learned_net", data=model)
            handle.create_dataset("current_step", data=np.int32(current_step))
            handle.create_dataset("resume_state", data=extra)
            group = handle.create_group("history")
            for k, h in enumerate(history):
                group.create_dataset(str(k), data=backend.to_host(h))
            _write_messages(handle, "pruning_mask", masks)
            _write_messages(handle, "weight_sharing", clusters)


def _write_messages(handle, name: str, messages) -> None:
    """Serialized messages (ParamMask, ParamClusters), as in the binary solverstate: a group
    of opaque scalars "0", "1", ... (their lengths differ, so no one array holds them)."""
    if messages:
        group = handle.create_group(name)
        for k, message in enumerate(messages):
            group.create_dataset(str(k), data=np.void(message.SerializeToString()))


def _read_messages(handle, name: str, kind) -> list:
    if name not in handle:
        return []
    item = handle[name]
    if hasattr(item, "keys"):
        return [kind.FromString(bytes(item[str(k)][()])) for k in range(len(item))]
    # an array of equal-length opaque values (snapshots written before the group form)
    return [kind.FromString(bytes(m)) for m in item[()]]


def _find_weights(learned_net: str, state_path: Path) -> Path:
    """The weights named in the state: as written, else beside the state file."""
    path = Path(learned_net)
    if path.exists():
        return path
    beside = state_path.parent / path.name
    if beside.exists():
        return beside
    raise DataError(f"{state_path}: its weights file {learned_net} does not exist")


def _not_a_state(path: Path) -> str:
    try:
        net = pb.NetParameter()
        net.ParseFromString(path.read_bytes())
        is_weights = bool(len(net.layer) or len(net.layers))
    except Exception:  # noqa: BLE001 - unparseable: damaged, whatever it was
        is_weights = False
    if is_weights:
        return (f"{path}: a weights file, not a solver state; resume from the .solverstate "
                "written beside it, or finetune from these weights with --weights")
    return f"{path}: damaged or not a solver state (.solverstate)"


def restore_state(solver, state_file) -> None:
    state_path = Path(state_file)
    if not state_path.exists():
        raise DataError(f"{state_path}: no such solver state file")
    if state_path.suffix == ".h5":
        import h5py

        try:
            with h5py.File(state_path, "r") as handle:
                iteration = int(handle["iter"][()])
                learned = handle["learned_net"][()] if "learned_net" in handle else b""
                learned = learned.decode() if isinstance(learned, bytes) else str(learned)
                history = [np.asarray(handle["history"][str(k)])
                           for k in range(len(handle["history"]))]
                extra = handle["resume_state"][()] if "resume_state" in handle else b""
                extra = extra.decode() if isinstance(extra, bytes) else str(extra)
                masks = _read_messages(handle, "pruning_mask", pb.ParamMask)
                clusters = _read_messages(handle, "weight_sharing", pb.ParamClusters)
        except (OSError, KeyError, DecodeError) as exc:
            raise DataError(f"{state_path}: damaged solver state ({exc})") from None
    else:
        if not weights.is_solver_state(state_path):
            raise DataError(_not_a_state(state_path))
        state = config.read_binary(state_path, pb.SolverState(), "solver state")
        iteration, learned, extra = state.iter, state.learned_net, state.resume_state
        if isinstance(learned, bytes) or isinstance(extra, bytes):  # proto2: not UTF-8
            raise DataError(f"{state_path}: damaged solver state (a text field is not UTF-8)")
        masks = list(state.pruning_mask)
        clusters = list(state.weight_sharing)
        history = [blobproto_to_array(b) for b in state.history]
    if learned:
        solver.snapshots.last = _find_weights(learned, state_path)
        copied = weights.copy_into(solver.net, solver.snapshots.last)
        missing = weights.layers_lacking_weights(solver.net, copied)
        if missing:
            # A resume continues the same net; a layer the snapshot lacks (renamed, added)
            # would restart from its filler while its history slot says otherwise.
            raise DataError(
                f"{state_path}: its weights ({solver.snapshots.last}) have no layer(s) "
                f"{', '.join(missing)} of this net, so it cannot resume it (renamed or new "
                "layers?); to start from those weights instead, pass them as --weights")
    slots = solver.rule.history
    flat = [(k, i) for k in range(len(slots)) for i in range(len(slots[k]))]
    if len(history) != len(flat):
        raise DataError(
            f"{state_path}: {len(history)} history blobs but this solver keeps {len(flat)} "
            "(different solver type or net?)"
        )
    for (k, i), values in zip(flat, history, strict=True):
        target = slots[k][i]
        if values.size != target.size:
            raise ShapeError(
                f"{state_path}: history blob {k * len(slots[0]) + i} has {values.size} values "
                f"but the parameter has {target.size}"
            )
        target[...] = solver.net.ctx.xp.asarray(values.reshape(target.shape))
    solver.iter = iteration
    if masks:
        solver.masks = ParamMasks.from_protos(solver.net.learnable_params, masks, str(state_path))
        solver.masks.apply(solver.rule.history)
    if clusters:
        solver.clusters = ParamClusters.from_protos(solver.net.learnable_params, clusters,
                                                    str(state_path))
    try:
        _apply_resume_state(solver, extra)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        # json errors are ValueErrors; a generator or cursor state of the wrong form is
        # any of the others.
        raise DataError(f"{state_path}: damaged resume state (random generators and data "
                        f"positions): {type(exc).__name__}: {exc}") from None
    log.info("SGDSolver: restoring history")
