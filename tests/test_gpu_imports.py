"""CPU runs never import CuPy or cuDNN: the GPU modules load only when a GPU is asked for.

A fresh interpreter blocks ``cupy``, ``cupyx`` and ``cudnn`` at the import system (so even a
machine with them installed proves the point), imports netforge, trains a tiny net for two
iterations and runs every numpy kernel that has a CuPy branch; then checks that no GPU
module was imported, and that asking for the GPU fails with netforge's clear error.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r"""
    import sys, importlib.abc

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("cupy", "cupyx", "cudnn"):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import netforge
    from netforge import netforge_pb2 as pb, config, backend
    from netforge.errors import DeviceError
    from netforge.train.solver import Solver

    net = '''
    name: "tiny"
    layer { name: "in" type: "Input" top: "x" top: "label"
            input_param { shape { dim: 4 dim: 1 dim: 6 dim: 6 } shape { dim: 4 } } }
    layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
            convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
    layer { name: "pool" type: "Pooling" bottom: "c" top: "p"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "norm" type: "LRN" bottom: "p" top: "n" lrn_param { local_size: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "n" top: "y"
            inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "l" }
    '''
    sp = pb.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=2, display=0,
                            random_seed=1, snapshot_after_train=False)
    config.parse_text(net, sp.net_param, "tiny.prototxt")
    solver = Solver(sp, metrics=False)
    assert solver.use_cuda_graph is False
    solver.step(2)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cupyx", "cudnn")
                    or m.startswith("netforge.ops.cuda"))
    print("LOADED", loaded)
    try:
        backend.set_mode_gpu()
    except DeviceError as exc:
        print("GPU-ERROR", exc)
""")


def test_cpu_training_imports_no_gpu_module():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout
    assert "GPU-ERROR a GPU was requested but CuPy is not installed" in out.stdout
