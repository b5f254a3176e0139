"""Input makers for the layer tables, drawing from the caller's generator so that each test
file's values stay reproducible from its own seed."""

from __future__ import annotations

import numpy as np


class TableInputs:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def distinct(self, *shape):
        """Values spread apart in [-1.99, 2.01): no near-ties for max windows or ReLU signs,
        none within 1e-3 of 0, ±0.5 or 0.75."""
        count = int(np.prod(shape))
        values = self.rng.permutation(count).astype(np.float64) / count * 4 - 2 + 0.01
        return values.reshape(shape)

    def normal(self, *shape):
        return self.rng.standard_normal(shape)

    def positive(self, *shape):
        return self.rng.uniform(0.5, 2.0, size=shape)

    def labels(self, n, classes, *extra):
        return self.rng.integers(0, classes, size=(n, *extra)).astype(np.float64)
