"""GPU tests: everything here carries the ``gpu`` marker and is skipped without a usable
CUDA GPU and CuPy (``netforge.backend.gpu_available``). Run them with ``pytest -m gpu``."""

from __future__ import annotations

import pytest

from netforge import backend


def pytest_collection_modifyitems(config, items):
    here = __file__.rsplit("/", 1)[0]
    usable = None
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.gpu)
            if usable is None:
                usable = backend.gpu_available()
            if not usable:
                item.add_marker(pytest.mark.skip(reason="no usable CUDA GPU / CuPy"))


@pytest.fixture
def cupy():
    import cupy

    backend.set_mode_gpu()
    yield cupy
    backend.set_mode_cpu()
