"""Pass: automatic Split insertion (Caffe's insert_splits.cpp).

A top read by more than one bottom feeds a Split layer named ``<blob>_<layer>_<i>_split``
whose tops ``<blob>_<layer>_<i>_split_<k>`` go one to each reader, in file order; backward
then sums their diffs. A top carrying a non-zero explicit loss_weight counts as one more
reader, and the weight moves to the split's first top, which no bottom reads.
"""

from __future__ import annotations

from netforge import netforge_pb2 as pb
from netforge.errors import GraphError


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(net: pb.NetParameter) -> pb.NetParameter:
    """A copy of ``net`` where every top consumed more than once feeds a Split layer."""
    last_producer: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise GraphError(
                    f'layer "{layer.name}" ({layer.type}): unknown bottom blob "{name}" '
                    f"(bottom index {j}); no layer above produces it"
                )
            source = last_producer[name]
            source_of[(i, j)] = source
            consumers[source] = consumers.get(source, 0) + 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            loss_weight[(i, j)] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[(i, j)] = consumers.get((i, j), 0) + 1

    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(net.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            source = source_of[(i, j)]
            if consumers.get(source, 0) > 1:
                k = next_split.get(source, 0)
                next_split[source] = k + 1
                producer = net.layer[source[0]].name
                new.bottom[j] = split_blob_name(name, producer, source[1], k)
        for j, name in enumerate(layer.top):
            count = consumers.get((i, j), 0)
            if count <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            split = out.layer.add(name=split_layer_name(name, layer.name, j), type="Split")
            split.bottom.append(name)
            for k in range(count):
                split.top.append(split_blob_name(name, layer.name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                new.ClearField("loss_weight")
                next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out
