"""Tests marked ``gpu`` run only where CuPy and a usable CUDA GPU exist; elsewhere they skip."""

from __future__ import annotations

import pytest

from netforge import backend


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not backend.gpu_available():
        skip = pytest.mark.skip(reason="needs CuPy and a usable CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
