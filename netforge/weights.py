"""Weights files: Caffe's binary ``.caffemodel``, HDF5 ``.caffemodel.h5`` and netforge
compress's ``.nfz`` (netforge/nfz.py; told apart by its magic bytes).

Copying is by layer name (Caffe's CopyTrainedLayersFrom): source layers the net lacks are
ignored, net layers the source lacks keep their filler values, a shape mismatch is an error
that names the layer and both shapes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from netforge import backend, config, nfz
from netforge import netforge_pb2 as pb
from netforge.data.hdf5 import is_hdf5_file
from netforge.data.records import array_to_blobproto, blobproto_to_array
from netforge.errors import ConfigError, DataError, ShapeError
from netforge.files import atomic_path, atomic_write_bytes, is_text_file

log = logging.getLogger("netforge")


def read_caffemodel(path) -> pb.NetParameter:
    """A NetParameter with layer blobs; legacy V0/V1 ``layers`` are upgraded, as Caffe's
    ReadNetParamsFromBinaryFile does (the zoo's older .caffemodel files are V1)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes), not weights")
    if path.is_file() and is_text_file(path):
        raise DataError(f"{path}: a text file (a net prototxt?), not binary weights; weights "
                        "are the .caffemodel written by training")
    net = config.read_binary(path, pb.NetParameter(), "weights file")
    try:
        return config.upgrade_net(net, str(path))
    except ConfigError as exc:
        raise DataError(str(exc)) from None


_LEGACY_DIMS = ("num", "channels", "height", "width")


def has_legacy_dims(proto: pb.BlobProto) -> bool:
    return any(proto.HasField(f) for f in _LEGACY_DIMS)


def blob_shape_matches(target_shape, proto: pb.BlobProto) -> bool:
    """Caffe's Blob::ShapeEquals.

    A legacy blob (num/channels/height/width) indexed its axes from the end: an old
    InnerProduct weight is 1×1×N×K and a bias 1×1×1×N. So the target's shape, padded with
    leading ones to four axes, must equal the legacy dims; targets with more than four axes
    never match. A modern blob must match ``shape`` exactly.
    """
    target_shape = tuple(int(d) for d in target_shape)
    if has_legacy_dims(proto):
        if len(target_shape) > 4:
            return False
        padded = (1,) * (4 - len(target_shape)) + target_shape
        return padded == tuple(int(getattr(proto, f)) for f in _LEGACY_DIMS)
    return tuple(int(d) for d in proto.shape.dim) == target_shape


def _describe_shape(proto: pb.BlobProto) -> str:
    if has_legacy_dims(proto):
        dims = tuple(int(getattr(proto, f)) for f in _LEGACY_DIMS)
        return f"{dims} (legacy num/channels/height/width)"
    return str(tuple(int(d) for d in proto.shape.dim))


def _shape_mismatch(path, layer: str, index: int, found: str, expected) -> ShapeError:
    return ShapeError(
        f'{path}: cannot copy param {index} of layer "{layer}": the file has shape {found} '
        f"but the net expects {tuple(expected)} (rename the layer to learn it from scratch "
        "instead)"
    )


def _copy_blob(target, proto: pb.BlobProto, layer: str, index: int, path) -> None:
    if not blob_shape_matches(target.shape, proto):
        raise _shape_mismatch(path, layer, index, _describe_shape(proto), target.shape)
    values = blobproto_to_array(proto, where=f'{path}: layer "{layer}" param {index}')
    target.data[...] = target.xp.asarray(values.reshape(target.shape).astype(target.dtype))


def _blob_count_error(path, layer: str, in_file: int, in_net: int) -> ShapeError:
    return ShapeError(
        f'{path}: layer "{layer}" has {in_file} param blob(s) in the file but {in_net} in '
        "the net"
    )


def copy_into(net, path) -> set[str]:
    """Copy weights from ``path`` into ``net`` by layer name (either file format); returns
    the names of the net's layers that received weights.

    Caffe's CopyTrainedLayersFrom: a source layer the net lacks is ignored; a net layer the
    file lacks keeps its initial values; a blob count or shape that differs is an error.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such weights file")
    if is_hdf5_file(path):
        return _copy_from_hdf5(net, path)
    if nfz.is_nfz_file(path):
        source = nfz.read_as_net_parameter(path)
    elif is_solver_state(path):
        raise DataError(f"{path}: a .solverstate (training state), not weights; give the "
                        "weights file written beside it "
                        f"({path.with_suffix('.caffemodel').name}), or resume with --snapshot")
    else:
        source = read_caffemodel(path)
    layers = net.layer_dict
    copied = set()
    for layer in source.layer:
        target = layers.get(layer.name)
        if target is None:
            log.info("Ignoring source layer %s", layer.name)
            continue
        if len(layer.blobs) != len(target.blobs):
            raise _blob_count_error(path, layer.name, len(layer.blobs), len(target.blobs))
        log.info("Copying source layer %s Type:%s #blobs=%d", layer.name, layer.type,
                 len(layer.blobs))
        for k, proto in enumerate(layer.blobs):
            _copy_blob(target.blobs[k], proto, layer.name, k, path)
        copied.add(layer.name)
    return copied


def is_solver_state(path) -> bool:
    """Whether ``path`` holds a SolverState (binary; a ``.solverstate``): it parses as one
    and names the weights file written with it. A NetParameter never does: its field 2 is
    a message, not a path ending in a weights suffix."""
    state = pb.SolverState()
    try:
        state.ParseFromString(Path(path).read_bytes())
    except Exception:  # noqa: BLE001 - whatever fails to parse is not a state
        return False
    learned = state.learned_net  # bytes when the file's string is not UTF-8 (proto2)
    if isinstance(learned, bytes):
        learned = learned.decode("utf-8", "replace")
    return learned.endswith((".caffemodel", ".h5", ".nfz"))


def layers_lacking_weights(net, copied: set[str]) -> list[str]:
    """The net's layers with parameters that no weights file supplied (they keep their
    fillers' random values)."""
    return [name for name in net.params if name not in copied]


def _copy_from_hdf5(net, path) -> set[str]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: damaged HDF5 weights file ({exc})") from None
    with handle:
        group = handle.get("data")
        if not isinstance(group, h5py.Group):
            raise DataError(f'{path}: no "data" group; not a Caffe HDF5 weights file')
        try:
            return _copy_hdf5_group(net, group, path)
        except (OSError, ValueError, TypeError) as exc:  # unreadable or non-numeric datasets
            raise DataError(f"{path}: damaged HDF5 weights file ({exc})") from None


def _copy_hdf5_group(net, group, path) -> set[str]:
    import h5py

    owned = {(name, k) for name, k, _ in _owned_params(net)}
    layers = net.layer_dict
    copied = set()
    for name in group:
        target = layers.get(name)
        if target is None:
            log.info("Ignoring source layer %s", name)
            continue
        stored = group[name]
        if not isinstance(stored, h5py.Group):
            raise DataError(f'{path}: "data/{name}" is not a group of param datasets')
        if len(stored) > len(target.blobs):
            raise _blob_count_error(path, name, len(stored), len(target.blobs))
        for k, blob in enumerate(target.blobs):
            key = str(k)
            if key not in stored:
                if (name, k) in owned:
                    raise _blob_count_error(path, name, len(stored), len(target.blobs))
                continue  # a shared (non-owner) param: Caffe does not store it
            values = np.asarray(stored[key])
            if values.shape != tuple(blob.shape):
                raise _shape_mismatch(path, name, k, str(values.shape), blob.shape)
            blob.data[...] = blob.xp.asarray(values.astype(blob.dtype))
        copied.add(name)
    return copied


def net_to_proto(net, write_diff: bool = False) -> pb.NetParameter:
    """Caffe's Net::ToProto: every layer's parameter message with its blobs."""
    out = pb.NetParameter(name=net.name)
    for step in net.plan.steps:
        layer = out.layer.add()
        layer.CopyFrom(step.layer.param)
        layer.ClearField("blobs")
        for blob in step.layer.blobs:
            diff = backend.to_host(blob.diff) if write_diff else None
            layer.blobs.add().CopyFrom(array_to_blobproto(backend.to_host(blob.data), diff))
    return out


def save_caffemodel(net, path, write_diff: bool = False) -> None:
    atomic_write_bytes(path, net_to_proto(net, write_diff).SerializeToString())


def _owned_params(net):
    """(layer name, index, blob) for each param its layer owns; shared copies are skipped.

    The owner of a shared blob is the first layer holding it, as in Caffe.
    """
    seen = set()
    for name, blobs in net.params.items():
        for k, blob in enumerate(blobs):
            if id(blob) not in seen:
                seen.add(id(blob))
                yield name, k, blob


def save_hdf5(net, path, write_diff: bool = False) -> None:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            data = handle.create_group("data")
            diff = handle.create_group("diff") if write_diff else None
            for name, k, blob in _owned_params(net):
                data.require_group(name).create_dataset(str(k), data=backend.to_host(blob.data))
                if diff is not None:
                    diff.require_group(name).create_dataset(
                        str(k), data=backend.to_host(blob.diff)
                    )
