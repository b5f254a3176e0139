"""Shared test set-up. Tests marked ``gpu`` run only where CuPy and a usable CUDA GPU
exist; elsewhere they skip."""

from __future__ import annotations

import logging

import pytest

from netforge import backend


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not backend.gpu_available():
        skip = pytest.mark.skip(reason="needs CuPy and a usable CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_cli_log_handlers():
    """An in-process ``netforge`` run (``netforge.cli.main.main([...])``) points the log at
    the stderr of its moment, which pytest replaces per test: drop such handlers around
    every test so no record is written to a closed capture stream."""
    logger = logging.getLogger("netforge")

    def drop():
        for handler in [h for h in logger.handlers if getattr(h, "_netforge", False)]:
            logger.removeHandler(handler)

    drop()
    yield
    drop()
