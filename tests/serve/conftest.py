"""Fixtures of the serve tests: a workspace with the bundled digits as class folders."""

from __future__ import annotations

import pytest

from tests.serve.helpers import write_digits

PER_CLASS = 50  # 10 of each class held out (val fraction 0.2): 100 val = one test batch


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve") / "workspace"
    root.mkdir()
    images, labels = write_digits(root / "digits", PER_CLASS)
    return root, images, labels
