"""Trained ternary quantization (Zhu et al. 2017, "Trained ternary quantization").

Per layer the forward pass uses w_t ∈ {−W_n, 0, +W_p}: with Δ = t·max|w| of the
full-precision (latent) weights w, w_t = +W_p where w > Δ, −W_n where w < −Δ, 0 elsewhere.
Training keeps w and learns the two scales:
    ∂L/∂W_p = Σ_{w>Δ} g,   ∂L/∂W_n = −Σ_{w<−Δ} g,
    ∂L/∂w   = W_p·g (w>Δ),  g (|w|≤Δ),  W_n·g (w<−Δ)         (g = ∂L/∂w_t)
As solver hooks: at the start of an iteration the blob gets w_t (forward and backward see
it); when the gradients are ready the scales step by gradient descent at the solver's rate,
the blob gets w back with ∂L/∂w as its diff, and the update rule trains w.
One departure from the paper: each scale steps by its gradient divided by the number of
weights on its side (the mean, not the sum). With the sum over LeNet's 200,000 ip1 weights a
scale jumped by thousands of weight-steps at the solver's rate and training collapsed to
chance within 100 iterations (measured); the mean moves a scale like one weight.
``finish`` leaves the ternary weights in the blobs.
"""

from __future__ import annotations

import numpy as np

from netforge import backend
from netforge.errors import ConfigError


class TernaryTraining:
    def __init__(self, solver, threshold: float = 0.05):
        if not 0 < threshold < 1:
            raise ConfigError(f"ternary threshold must be in (0, 1), got {threshold}")
        self.solver = solver
        self.threshold = threshold
        self.scales: dict[int, list[float]] = {}  # param index -> [W_p, W_n]
        self.latent: dict[int, object] = {}
        self._hooks = (self.before_forward, self.after_backward, None)

    def add(self, index: int) -> None:
        """Ternarise param ``index``; W_p, W_n start as the mean |w| of their side."""
        w = backend.to_host(self.solver.net.learnable_params[index].blob.data)
        delta = self.threshold * float(np.abs(w).max())
        positive, negative = w[w > delta], w[w < -delta]
        self.scales[index] = [float(positive.mean()) if positive.size else 0.0,
                              float(-negative.mean()) if negative.size else 0.0]

    def install(self) -> None:
        self.solver.callbacks.append(self._hooks)

    def _masks(self, w):
        delta = self.threshold * float(abs(w).max())
        return w > delta, w < -delta

    def ternary(self, index: int, w):
        xp = self.solver.net.learnable_params[index].blob.xp
        wp, wn = self.scales[index]
        pos, neg = self._masks(w)
        return xp.where(pos, wp, xp.where(neg, -wn, 0)).astype(w.dtype)

    def before_forward(self) -> None:
        for i in self.scales:
            blob = self.solver.net.learnable_params[i].blob
            self.latent[i] = blob.data.copy()
            blob.data[...] = self.ternary(i, self.latent[i])

    def after_backward(self) -> None:
        rate = self.solver.lr
        for i, (wp, wn) in self.scales.items():
            p = self.solver.net.learnable_params[i]
            w, g = self.latent[i], p.blob.diff
            pos, neg = self._masks(w)
            xp = p.blob.xp
            grad_wp = float(g[pos].sum()) / max(int(pos.sum()), 1)
            grad_wn = float(-g[neg].sum()) / max(int(neg.sum()), 1)
            factor = xp.where(pos, wp, xp.where(neg, wn, 1)).astype(g.dtype)
            g *= factor
            self.scales[i] = [wp - rate * p.lr_mult * grad_wp, wn - rate * p.lr_mult * grad_wn]
            p.blob.data[...] = w

    def finish(self) -> dict[int, np.ndarray]:
        """Leave the ternary weights in the blobs, remove the hooks; returns each param's
        index map for storage (−1: zero, 0: −W_n, 1: +W_p)."""
        if self._hooks in self.solver.callbacks:
            self.solver.callbacks.remove(self._hooks)
        maps = {}
        for i in self.scales:
            blob = self.solver.net.learnable_params[i].blob
            w = backend.to_host(blob.data)
            pos, neg = self._masks(w)
            blob.data[...] = self.ternary(i, blob.data)
            maps[i] = np.where(pos, 1, np.where(neg, 0, -1))
        return maps
