"""A compressed net → ``.nfz`` (netforge/nfz.py), and the size report against the .caffemodel.

Shared weights are stored sparse (relative offsets + cluster symbols, Huffman-coded, with the
codebook); everything else (biases, unshared blobs) as raw float32. Each layer's offset width
is the one of 2..8 bits that gives the smallest blob (the paper fixed 8 bits for conv and 5
for fc layers; with Huffman coding on top the best width is data-dependent and cheap to try).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netforge import backend, nfz
from netforge import netforge_pb2 as pb
from netforge.weights import net_to_proto

OFFSET_BITS = range(2, 9)


@dataclass
class LayerSize:
    name: str
    weights: int  # values in the layer's blobs
    kept: int  # non-zero values
    bits: int  # cluster-index bits of the shared weight, 32 when stored as float
    nfz_bytes: int  # the layer's blobs in the .nfz
    caffemodel_bytes: int  # the layer's blobs in the .caffemodel

    @property
    def ratio(self) -> float:
        return self.caffemodel_bytes / max(self.nfz_bytes, 1)


def _best_sparse_blob(index_map, codebook) -> pb.CompressedBlob:
    blobs = [nfz.sparse_shared_blob(index_map, codebook, b) for b in OFFSET_BITS]
    return min(blobs, key=lambda blob: blob.ByteSize())


def compress_net(net, sharing=None) -> tuple[pb.CompressedNet, list[LayerSize]]:
    """The CompressedNet of ``net``'s weights (``sharing``: a WeightSharing of its solver, or
    None) and the per-layer sizes."""
    shared = {}
    if sharing is not None:
        params = sharing.solver.net.learnable_params
        shared = {(params[i].layer_name, params[i].index): i for i in sharing.labels}
    caffemodel = {layer.name: layer for layer in net_to_proto(net).layer}
    out = nfz.new_net(net.name)
    rows = []
    for layer in net.layers:
        if not layer.blobs:
            continue
        stored = out.layer.add(name=layer.name, type=layer.type)
        weights = kept = 0
        bits = 32
        for k, blob in enumerate(layer.blobs):
            values = backend.to_host(blob.data)
            weights += values.size
            kept += int(np.count_nonzero(values))
            if (layer.name, k) in shared:
                i = shared[(layer.name, k)]
                codebook, index_map = sharing.codebook(i)
                stored.blobs.add().CopyFrom(_best_sparse_blob(index_map, codebook))
                bits = sharing.bits[i]
            else:
                stored.blobs.add().CopyFrom(nfz.raw_blob(values))
        source = caffemodel[layer.name]
        rows.append(LayerSize(layer.name, weights, kept, bits, stored.ByteSize(),
                              sum(b.ByteSize() for b in source.blobs)))
    return out, rows


def caffemodel_size(net) -> int:
    """Bytes of the .caffemodel netforge writes for ``net`` (Net::ToProto serialized)."""
    return net_to_proto(net).ByteSize()


def format_report(rows: list[LayerSize], nfz_file_bytes: int, caffemodel_bytes: int) -> str:
    lines = [f"{'layer':<12} {'weights':>9} {'kept':>9} {'kept %':>7} {'bits':>5} "
             f"{'bytes':>9} {'caffemodel':>11} {'ratio':>7}"]
    for r in rows:
        lines.append(f"{r.name:<12} {r.weights:>9} {r.kept:>9} {100 * r.kept / r.weights:>6.2f}% "
                     f"{r.bits:>5} {r.nfz_bytes:>9} {r.caffemodel_bytes:>11} {r.ratio:>6.1f}x")
    weights = sum(r.weights for r in rows)
    kept = sum(r.kept for r in rows)
    lines.append(f"{'total':<12} {weights:>9} {kept:>9} {100 * kept / max(weights, 1):>6.2f}% "
                 f"{'':>5} {nfz_file_bytes:>9} {caffemodel_bytes:>11} "
                 f"{caffemodel_bytes / max(nfz_file_bytes, 1):>6.1f}x")
    lines.append(f"non-zero weights: {weights / max(kept, 1):.1f}x fewer; file: .nfz "
                 f"{nfz_file_bytes} bytes vs .caffemodel {caffemodel_bytes} bytes")
    return "\n".join(lines)
