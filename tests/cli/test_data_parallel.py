"""netforge train --gpu 0,1 where no GPU is usable: one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.train.parallel.helpers import rank_env


def test_train_with_several_gpus_refuses_clearly_without_a_gpu(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "x.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    done = subprocess.run([sys.executable, "-m", "netforge", "train", "--solver", str(solver),
                           "--gpu", "0,1"], capture_output=True, text=True, env=rank_env(),
                          timeout=60)
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("a GPU is usable here")
    except Exception:
        pass
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netforge: error: --gpu 0,1: ")
    assert "GPU" in lines[0]


