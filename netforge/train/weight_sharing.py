"""Weight-sharing clusters the solver keeps (Deep Compression §3, centroid retraining).

A ``ParamClusters`` holds, for each shared learnable parameter, its index map: per weight
its cluster (0 .. 2^bits − 1) or −1 for a pruned weight. Before each update the solver
(``Solver.clusters``) calls ``sum_gradients``: every weight of a cluster gets the cluster's
summed gradient as its diff, so whatever the update rule, all of a cluster's weights (equal
values, equal decay, equal history) move by the same amount and stay equal to its centroid.
The centroids are therefore the weights themselves; only the index maps need saving, and
they travel in the solverstate (``SolverState.weight_sharing``), so a resumed retraining sums
the same clusters bit for bit.

netforge/deploy/compress/sharing.py makes the clusters (k-means); this module only keeps them.
"""

from __future__ import annotations

import numpy as np

from netforge import backend
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError, DataError
from netforge.train.pruning import checked_param_index

MAX_BITS = 16


class ParamClusters:
    """Per learnable parameter (by index in ``params``), its cluster index map."""

    def __init__(self, params):
        self.params = params
        self.labels: dict[int, object] = {}  # param index -> xp int64 array, -1 = pruned
        self.bits: dict[int, int] = {}

    def set(self, index: int, index_map, bits: int) -> None:
        if not 1 <= bits <= MAX_BITS:
            raise ConfigError(f"weight sharing bits must be in 1..{MAX_BITS}, got {bits}")
        blob = self.params[index].blob
        index_map = np.asarray(index_map, np.int64)
        if index_map.shape != tuple(blob.shape):
            raise ConfigError(f"index map of shape {index_map.shape} for param {index} of "
                              f"shape {tuple(blob.shape)}")
        self.labels[index] = blob.xp.asarray(index_map)
        self.bits[index] = bits

    def n_clusters(self, index: int) -> int:
        return 2 ** self.bits[index]

    def index_map(self, index: int) -> np.ndarray:
        return backend.to_host(self.labels[index])

    def sum_gradients(self) -> None:
        """Each shared weight's diff becomes its cluster's summed gradient (0 if pruned)."""
        for i, labels in self.labels.items():
            blob = self.params[i].blob
            xp = blob.xp
            kept = labels >= 0
            # float64 sums: a cluster of ip1 gathers tens of thousands of gradients
            sums = xp.bincount(labels[kept], weights=blob.diff[kept].astype(np.float64),
                               minlength=self.n_clusters(i))
            summed = sums.astype(blob.diff.dtype)[xp.maximum(labels, 0)]
            blob.diff[...] = xp.where(kept, summed, 0)

    # -- solverstate -------------------------------------------------------------------------
    def to_protos(self) -> list[pb.ParamClusters]:
        out = []
        for i in sorted(self.labels):
            index_map = self.index_map(i)
            out.append(pb.ParamClusters(param_index=i, shape=list(index_map.shape),
                                        bits=self.bits[i], index_map=index_map.ravel().tolist()))
        return out

    @classmethod
    def from_protos(cls, params, protos, where: str = "solver state") -> ParamClusters:
        clusters = cls(params)
        for proto in protos:
            i = checked_param_index(params, proto.param_index, "weight-sharing clusters",
                                    where)
            shape = tuple(int(d) for d in proto.shape)
            index_map = np.asarray(proto.index_map, np.int64)
            if shape != tuple(params[i].blob.shape) or index_map.size != int(np.prod(shape)):
                raise DataError(f"{where}: weight-sharing index map {i} has shape {shape} and "
                                f"{index_map.size} entries but the param has "
                                f"{tuple(params[i].blob.shape)}")
            if not 1 <= proto.bits <= MAX_BITS or (
                    index_map.size and not -1 <= index_map.min() <= index_map.max()
                    < 2 ** proto.bits):
                raise DataError(f"{where}: weight-sharing index map {i} is damaged (bits "
                                f"{proto.bits}, clusters outside -1..2^bits-1)")
            clusters.set(i, index_map.reshape(shape), proto.bits)
        return clusters
