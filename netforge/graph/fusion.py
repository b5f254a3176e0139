"""Fusion from the static graph: a layer and the in-place elementwise layers right after it
run as one pass (``find_chains``, a compile pass; ``Net.run_forward`` runs the chains).

The chains, each a head and the layers it absorbs, in this order (any subset, at least one):

    Convolution  ->  BatchNorm (stored statistics)  ->  Scale  ->  ReLU
    InnerProduct ->  ReLU
    BatchNorm    ->  Scale  ->  ReLU          (batch statistics, or stored ones)

The head writes its output through a per-channel epilogue (``netforge.ops.fused``): the
convolution's transpose-and-bias pass, the inner product's bias pass, BatchNorm's
normalising pass (stored statistics) or one pass after it (batch statistics) also apply the
absorbed layers. Each stage rounds as its layer does, so the outputs are the unfused ones.

Where Caffe's semantics allow it:

- An absorbed layer runs in place on the head's top (Caffe's idiom: ``top == bottom``), in
  the step right after the previous one, with one bottom and one top. No other layer can
  see the values in between (a blob read by two layers feeds a Split, which ends a chain),
  so every blob a user can ask for (``net.blobs``, ``keep_blobs`` of a reuse_memory net,
  the outputs) holds what the unfused net leaves in it.
- Backward is unchanged, layer by layer: ReLU's reads the top data (the same values),
  BatchNorm's its x_norm or inv_std (computed by the fused forward), Scale's the copy of its
  bottom. Hence a Scale that needs backward is absorbed only by a BatchNorm computing batch
  statistics, whose x_norm is that bottom (copied into the Scale's ``bottom_copy`` unless
  the Scale already borrows x_norm, netforge.graph.train_memory); and a BatchNorm computing
  batch statistics is never absorbed (its statistics need the whole output first).
- A Scale is absorbed when it has one bottom and scales the channel axis (axis 1, one axis).
- ``Net.forward(start=..., end=...)`` ranges that cut a chain, and ``debug_info`` (which
  logs every layer), run the layers one by one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netforge.ops.fused import ChannelEpilogue
from netforge.ops.xp import view_as

if TYPE_CHECKING:  # graph.plan imports this module (Plan.share_memory)
    from netforge.graph.plan import LayerStep

log = logging.getLogger("netforge")

# The order the absorbed layers may come in; each at most once.
_STAGES = ("BatchNorm", "Scale", "ReLU")


@dataclass
class FusedChain:
    """Steps ``first`` .. ``first + len(absorbed)`` of the plan, run as one."""

    first: int
    head: LayerStep
    absorbed: list[LayerStep] = field(default_factory=list)
    forward_only: bool = False  # the net never runs backward (nothing keeps copies for it)

    @property
    def last(self) -> int:
        return self.first + len(self.absorbed)

    @property
    def names(self) -> list[str]:
        return [self.head.layer.name] + [step.layer.name for step in self.absorbed]

    def epilogue(self) -> ChannelEpilogue:
        """The absorbed layers as a per-channel epilogue, from their current parameters
        (read each call: weights may be replaced, e.g. by ``share_trained_layers``)."""
        stages = {}
        for step in self.absorbed:
            layer = step.layer
            if layer.type == "BatchNorm":
                layer.compute_statistics()
                stages.update(mean=layer.mean, inv_std=layer.inv_std)
            elif layer.type == "Scale":
                stages["scale"] = layer.blobs[0].data.reshape(-1)
                if layer.bias_index is not None:
                    stages["shift"] = layer.blobs[layer.bias_index].data.reshape(-1)
            else:
                stages["slope"] = layer.slope
        return ChannelEpilogue(**stages)

    def forward(self) -> None:
        head = self.head
        head.layer.forward(head.bottoms, head.tops, epilogue=self.epilogue())
        if self.forward_only:
            return
        for step in self.absorbed:  # a Scale's backward reads its bottom: BatchNorm's x_norm
            layer = step.layer
            if layer.type == "Scale" and layer.need_backward and not layer.copy_borrowed:
                copy = view_as(layer.bottom_copy, head.layer.x_norm.shape)
                layer.xp.copyto(copy, head.layer.x_norm)


def _absorbable(head: LayerStep, step: LayerStep, done: list[str], forward_only: bool) -> bool:
    """Whether ``step`` (right after the chain so far) can join ``head``'s chain."""
    layer = step.layer
    kind = layer.type
    if kind not in _STAGES or (done and _STAGES.index(kind) <= _STAGES.index(done[-1])):
        return False
    if len(step.bottom_names) != 1 or len(step.top_names) != 1 or not step.in_place(0):
        return False
    if step.bottom_names[0] != head.top_names[0]:
        return False
    head_kind = head.layer.type
    if kind == "BatchNorm":  # only into a convolution, and only with stored statistics
        return head_kind == "Convolution" and layer.use_global_stats
    if kind == "Scale":
        p = layer.param.scale_param
        if len(step.bottoms) != 1 or p.axis != 1 or p.num_axes != 1:
            return False
        if head_kind == "InnerProduct":
            return False
        batch_stats = head_kind == "BatchNorm" and not head.layer.use_global_stats
        return batch_stats or forward_only or not layer.need_backward
    return True  # ReLU


def _head(step: LayerStep) -> bool:
    kind = step.layer.type
    if kind not in ("Convolution", "InnerProduct", "BatchNorm"):
        return False
    return len(step.bottom_names) == 1 and len(step.top_names) == 1


def find_chains(steps: list[LayerStep], forward_only: bool = False) -> dict[int, FusedChain]:
    """The fused chains of a plan's steps, by the index of their head (the pass).
    ``forward_only``: the net never runs backward (``Plan.share_memory``), so a Scale's
    copy of its bottom is never read and any Scale may be absorbed."""
    chains: dict[int, FusedChain] = {}
    i = 0
    while i < len(steps):
        head = steps[i]
        if not _head(head):
            i += 1
            continue
        chain = FusedChain(i, head, forward_only=forward_only)
        done: list[str] = []
        j = i + 1
        while j < len(steps) and _absorbable(head, steps[j], done, forward_only):
            chain.absorbed.append(steps[j])
            done.append(steps[j].layer.type)
            j += 1
        if chain.absorbed:
            chains[i] = chain
            log.debug("Fused %s", " + ".join(chain.names))
        i = j
    return chains


def run_forward(chains: dict[int, FusedChain], steps: list[LayerStep], first: int, last: int,
                run_step) -> None:
    """Steps first..last: a chain wholly inside the range runs fused, every other step by
    ``run_step(i)`` (the net's own per-layer forward)."""
    i = first
    while i <= last:
        chain = chains.get(i)
        if chain is not None and chain.last <= last:
            chain.forward()
            i = chain.last + 1
        else:
            run_step(i)
            i += 1
