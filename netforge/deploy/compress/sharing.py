"""Weight sharing (Deep Compression §3): per layer, k-means on the kept weights to 2^bits
centroids, initialised linearly between the smallest and largest weight (the paper found the
linear initialisation best: it keeps the rare large weights, which matter most).

Retraining updates each centroid by the sum of its weights' gradients. The solver does it
(netforge/train/weight_sharing.py, ``Solver.clusters``): every weight of a cluster gets the
cluster's summed gradient as its diff, so the update rule moves all of them by the same
amount (their values, decay and history being equal), and every weight stays equal to its
centroid, whatever the rule; the index maps travel in the solverstate, so a resumed
retraining is bit-exact.
"""

from __future__ import annotations

import numpy as np

from netforge import backend
from netforge.errors import ConfigError
from netforge.train.weight_sharing import MAX_BITS, ParamClusters


def linear_kmeans(values, n_clusters: int, iterations: int = 30):
    """1-D k-means (Lloyd) with linear initialisation: (codebook, labels).

    Empty clusters keep their previous centroid; stops when no label changes.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if n_clusters < 1:
        raise ConfigError(f"k-means needs at least one cluster, got {n_clusters}")
    if values.size == 0:
        return np.zeros(n_clusters), np.zeros(0, np.int64)
    centroids = np.linspace(values.min(), values.max(), n_clusters)
    labels = None
    for _ in range(iterations):
        # Centroids stay sorted (each is a mean inside its own interval), so the nearest one
        # is found from the midpoints between neighbours.
        new_labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sums = np.bincount(labels, weights=values, minlength=n_clusters)
        sizes = np.bincount(labels, minlength=n_clusters)
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled]
    return centroids, labels


class WeightSharing:
    """The weight sharing of a solver's train net: the clusters it retrains (kept by the
    solver, ``Solver.clusters``, so snapshots carry them) and index maps adopted from
    elsewhere (ternary weights), which storage reads but nothing retrains."""

    def __init__(self, solver):
        self.solver = solver
        self.adopted = ParamClusters(solver.net.learnable_params)

    @property
    def retrained(self) -> ParamClusters:
        if self.solver.clusters is None:
            self.solver.clusters = ParamClusters(self.solver.net.learnable_params)
        return self.solver.clusters

    @property
    def labels(self) -> dict[int, object]:
        """Param index -> index map (xp int array, -1 = pruned) of every shared param."""
        retrained = self.solver.clusters.labels if self.solver.clusters is not None else {}
        return {**self.adopted.labels, **retrained}

    @property
    def bits(self) -> dict[int, int]:
        retrained = self.solver.clusters.bits if self.solver.clusters is not None else {}
        return {**self.adopted.bits, **retrained}

    def share(self, index: int, bits: int) -> None:
        """Cluster param ``index``'s kept weights to 2^bits values; its weights become the
        centroids and its history restarts at 0 (equal history keeps a cluster together).
        From the next update on, the solver sums each cluster's gradients."""
        if not 1 <= bits <= MAX_BITS:
            raise ConfigError(f"weight sharing bits must be in 1..{MAX_BITS}, got {bits}")
        p = self.solver.net.learnable_params[index]
        values = backend.to_host(p.blob.data).astype(np.float64)
        masks = self.solver.masks
        kept = masks.kept(index) if masks is not None and index in masks.masks else None
        kept = np.ones(values.shape, bool) if kept is None else kept
        codebook, labels = linear_kmeans(values[kept], 2**bits)
        index_map = np.full(values.shape, -1, np.int64)
        index_map[kept] = labels
        self.retrained.set(index, index_map, bits)
        dense = np.where(kept, codebook[np.maximum(index_map, 0)], 0.0)
        p.blob.data[...] = p.blob.xp.asarray(dense.astype(p.blob.data.dtype))
        for slot in self.solver.rule.history:
            slot[index][...] = 0

    def adopt(self, index: int, index_map, bits: int) -> None:
        """Record an index map made elsewhere (ternary weights: 1 bit, two values)."""
        self.adopted.set(index, index_map, bits)

    def codebook(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(codebook, index map) of param ``index`` now: each centroid read back from the
        weights (all equal within a cluster); a centroid no weight uses reads as 0."""
        labels = backend.to_host(self.labels[index])
        values = backend.to_host(self.solver.net.learnable_params[index].blob.data)
        codebook = np.zeros(2 ** self.bits[index], np.float32)
        kept = labels >= 0
        codebook[labels[kept]] = values[kept]
        return codebook, labels
