"""Weights files: Caffe's binary ``.caffemodel`` and HDF5 ``.caffemodel.h5``.

Copying is by layer name (Caffe's CopyTrainedLayersFrom): source layers the net lacks are
ignored, net layers the source lacks keep their filler values, a shape mismatch is an error
that names the layer and both shapes.
"""

from __future__ import annotations

import logging
from math import prod
from pathlib import Path

import numpy as np

from netforge import backend, config
from netforge import netforge_pb2 as pb
from netforge.data.records import array_to_blobproto, blobproto_to_array
from netforge.errors import DataError, ShapeError
from netforge.fileio import atomic_path, atomic_write_bytes

log = logging.getLogger("netforge")


def is_hdf5(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89HDF\r\n\x1a\n"


def read_caffemodel(path) -> pb.NetParameter:
    """A NetParameter with layer blobs; legacy V1 ``layers`` are upgraded."""
    net = config.read_binary(path, pb.NetParameter(), "weights file")
    if net.layers and not net.layer:
        raise DataError(
            f"{path}: holds legacy V1 `layers`, which this netforge version cannot upgrade "
            "yet; convert it with Caffe's upgrade_net_proto_binary"
        )
    return net


def _legacy_compatible(target_shape, proto: pb.BlobProto) -> bool:
    """Caffe compares legacy 4-D blobs on the last four axes, padding ours with ones."""
    legacy = (proto.num, proto.channels, proto.height, proto.width)
    if len(target_shape) > 4:
        return False
    padded = (1,) * (4 - len(target_shape)) + tuple(target_shape)
    return padded == legacy


def _proto_shape(proto: pb.BlobProto) -> tuple[int, ...]:
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    return (proto.num, proto.channels, proto.height, proto.width)


def _copy_blob(target, proto: pb.BlobProto, layer: str, index: int, path) -> None:
    has_legacy = any(proto.HasField(f) for f in ("num", "channels", "height", "width"))
    source_shape = _proto_shape(proto)
    fits = _legacy_compatible(target.shape, proto) if has_legacy else source_shape == target.shape
    if not fits:
        raise ShapeError(
            f'{path}: cannot copy param {index} of layer "{layer}": the file has shape '
            f"{source_shape} but the net expects {target.shape} (rename the layer to learn it "
            "from scratch instead)"
        )
    values = blobproto_to_array(proto).reshape(target.shape)
    target.data[...] = target.xp.asarray(values.astype(target.dtype, copy=False))


def copy_into(net, path) -> None:
    """Copy weights from ``path`` into ``net`` by layer name (either file format)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such weights file")
    if is_hdf5(path):
        _copy_from_hdf5(net, path)
        return
    source = read_caffemodel(path)
    for layer in source.layer:
        target = net.params.get(layer.name)
        if target is None:
            if layer.blobs and layer.name not in net.layer_dict:
                log.info("Ignoring source layer %s", layer.name)
            continue
        if len(layer.blobs) != len(target):
            raise ShapeError(
                f'{path}: layer "{layer.name}" has {len(layer.blobs)} param blob(s) in the file '
                f"but {len(target)} in the net"
            )
        log.info("Copying source layer %s Type:%s #blobs=%d", layer.name, layer.type,
                 len(layer.blobs))
        for k, proto in enumerate(layer.blobs):
            _copy_blob(target[k], proto, layer.name, k, path)


def _copy_from_hdf5(net, path) -> None:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: damaged HDF5 weights file ({exc})") from None
    with handle:
        if "data" not in handle:
            raise DataError(f'{path}: no "data" group; not a Caffe HDF5 weights file')
        group = handle["data"]
        for name in group:
            target = net.params.get(name)
            if target is None:
                log.info("Ignoring source layer %s", name)
                continue
            for k, blob in enumerate(target):
                key = str(k)
                if key not in group[name]:
                    continue  # shared (non-owner) params are not stored
                values = np.asarray(group[name][key])
                if values.shape != blob.shape and values.size != prod(blob.shape):
                    raise ShapeError(
                        f'{path}: cannot copy param {k} of layer "{name}": the file has shape '
                        f"{values.shape} but the net expects {blob.shape}"
                    )
                blob.data[...] = blob.xp.asarray(values.reshape(blob.shape).astype(blob.dtype))


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
