"""Shared test set-up."""

from __future__ import annotations

import logging

import pytest


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
