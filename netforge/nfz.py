"""The ``.nfz`` weights file of ``netforge compress`` (Deep Compression's storage).

Layout (documented with the messages in proto/netforge.proto, CompressedNet):
    "NFZ\\0" · format version (uint32 LE) · CRC-32 of the body (uint32 LE) · CompressedNet
A pruned, weight-shared blob keeps its non-zero entries as relative offsets and cluster
symbols, both Huffman-coded (netforge/huffman.py), plus its codebook; other blobs are raw
float32. ``to_net_parameter`` turns a file into the NetParameter a .caffemodel would hold, so
it loads wherever a .caffemodel does (weights.copy_into dispatches on the magic).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from netforge import huffman
from netforge import netforge_pb2 as pb
from netforge.data.records import array_to_blobproto
from netforge.errors import DataError
from netforge.files import atomic_write_bytes
from netforge.version import __version__

MAGIC = b"NFZ\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sII")


def is_nfz_file(path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False


# -- blobs ----------------------------------------------------------------------------------
def raw_blob(values) -> pb.CompressedBlob:
    values = np.asarray(values)
    return pb.CompressedBlob(shape=list(values.shape), encoding=pb.CompressedBlob.RAW_FLOAT32,
                             raw=values.astype("<f4").tobytes())


def sparse_shared_blob(index_map, codebook, offset_bits: int) -> pb.CompressedBlob:
    """A blob whose entry j is 0 where ``index_map[j] < 0``, else ``codebook[index_map[j]]``.

    Stored entries are the non-zero ones in C order, each with its gap (zeros skipped since
    the previous stored entry); gaps longer than 2^offset_bits − 1 get filler entries
    (gap 2^offset_bits − 1, symbol len(codebook) = the value 0), as in Deep Compression.
    """
    index_map = np.asarray(index_map, dtype=np.int64)
    codebook = np.asarray(codebook, dtype=np.float32)
    if not 1 <= offset_bits <= 16:
        raise DataError(f"offset bits must be in 1..16, got {offset_bits}")
    flat = index_map.ravel()
    positions = np.flatnonzero(flat >= 0)
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    cap = (1 << offset_bits) - 1
    fillers = gaps // (cap + 1)  # filler entries before each stored entry
    n = int(positions.size + fillers.sum())
    offsets = np.full(n, cap, dtype=np.int64)
    symbols = np.full(n, codebook.size, dtype=np.int64)
    real = np.arange(positions.size) + np.cumsum(fillers)  # where the real entries land
    offsets[real] = gaps - fillers * (cap + 1)
    symbols[real] = flat[positions]
    off_lengths, off_payload = huffman.encode(offsets, cap + 1)
    sym_lengths, sym_payload = huffman.encode(symbols, codebook.size + 1)
    return pb.CompressedBlob(
        shape=list(index_map.shape), encoding=pb.CompressedBlob.SPARSE_SHARED,
        codebook=codebook.tolist(), offset_bits=offset_bits,
        offsets=pb.HuffmanStream(code_lengths=off_lengths.tolist(), count=n,
                                 payload=off_payload),
        clusters=pb.HuffmanStream(code_lengths=sym_lengths.tolist(), count=n,
                                  payload=sym_payload))


def decode_blob(blob: pb.CompressedBlob, where: str = "blob") -> np.ndarray:
    shape = tuple(int(d) for d in blob.shape)
    count = int(np.prod(shape)) if shape else 1
    if blob.encoding == pb.CompressedBlob.RAW_FLOAT32:
        if len(blob.raw) != 4 * count:
            raise DataError(f"{where}: {len(blob.raw)} raw bytes for shape {shape}")
        return np.frombuffer(blob.raw, "<f4").astype(np.float32).reshape(shape)
    if blob.encoding != pb.CompressedBlob.SPARSE_SHARED:
        raise DataError(f"{where}: unknown encoding {blob.encoding}")
    offsets = huffman.decode(blob.offsets.code_lengths, blob.offsets.count,
                             blob.offsets.payload, f"{where} offsets")
    symbols = huffman.decode(blob.clusters.code_lengths, blob.clusters.count,
                             blob.clusters.payload, f"{where} clusters")
    values = np.concatenate([np.asarray(blob.codebook, np.float32), np.zeros(1, np.float32)])
    if offsets.size != symbols.size or (symbols.size and symbols.max() >= values.size):
        raise DataError(f"{where}: offsets and cluster symbols disagree")
    positions = np.cumsum(offsets + 1) - 1
    if positions.size and positions[-1] >= count:
        raise DataError(f"{where}: entries run past the blob's {count} values")
    out = np.zeros(count, np.float32)
    out[positions] = values[symbols]
    return out.reshape(shape)


def stored_bytes(blob: pb.CompressedBlob) -> int:
    return blob.ByteSize()


# -- files ----------------------------------------------------------------------------------
def new_net(name: str) -> pb.CompressedNet:
    return pb.CompressedNet(format_version=FORMAT_VERSION, netforge_version=__version__,
                            name=name)


def encode_file(net: pb.CompressedNet) -> bytes:
    body = net.SerializeToString()
    return _HEADER.pack(MAGIC, FORMAT_VERSION, zlib.crc32(body)) + body


def write_nfz(path, net: pb.CompressedNet) -> int:
    """Write atomically; returns the file's size in bytes."""
    data = encode_file(net)
    atomic_write_bytes(path, data)
    return len(data)


def read_nfz(path) -> pb.CompressedNet:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise DataError(f"{path}: not an .nfz weights file (bad magic)")
    _, version, checksum = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: .nfz format version {version}; this netforge reads "
                        f"version {FORMAT_VERSION}")
    body = data[_HEADER.size:]
    if zlib.crc32(body) != checksum:
        raise DataError(f"{path}: damaged .nfz file (checksum mismatch)")
    try:
        return pb.CompressedNet.FromString(body)
    except DecodeError:
        raise DataError(f"{path}: damaged .nfz file (body does not parse)") from None


def to_net_parameter(net: pb.CompressedNet, where: str = ".nfz") -> pb.NetParameter:
    """The NetParameter (layers with float blobs) a .caffemodel of the same weights holds."""
    out = pb.NetParameter(name=net.name)
    for layer in net.layer:
        target = out.layer.add(name=layer.name, type=layer.type)
        for k, blob in enumerate(layer.blobs):
            values = decode_blob(blob, f'{where}: layer "{layer.name}" blob {k}')
            target.blobs.add().CopyFrom(array_to_blobproto(values))
    return out


def read_as_net_parameter(path) -> pb.NetParameter:
    return to_net_parameter(read_nfz(path), str(path))
