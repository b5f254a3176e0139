"""Shared by the data-parallel tests: the LMDB-fed net and solver, and running ranks.

The 2-process cases run under the mpiexec of the ``[mpi]`` extra (MPICH wheel), which the
``test`` extra installs; they are skipped only where mpi4py/mpiexec are missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.train.solver import Solver

MPIEXEC = Path(sys.executable).with_name("mpiexec")
ROOT = Path(__file__).resolve().parents[3]
needs_mpi = pytest.mark.skipif(
    not MPIEXEC.exists() or subprocess.run([sys.executable, "-c", "import mpi4py"]).returncode,
    reason="the [mpi] extra (mpi4py + mpich) is not installed")


def rank_env(**extra) -> dict:
    """The environment for a job started from a test: this checkout first on the path, and
    no launcher variables inherited from outside."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "RANK"):
        env.pop(name, None)
    return env


def data_net(db, batch: int, dropout: bool = False) -> str:
    """Data (LMDB, with random crops and mirrors) → conv → ip → ReLU [→ Dropout] → ip →
    softmax loss."""
    drop = ('layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" '
            'dropout_param { dropout_ratio: 0.3 } }') if dropout else ""
    return f"""
    name: "parallel_net"
    layer {{ name: "data" type: "Data" top: "data" top: "label"
            transform_param {{ scale: 0.00390625 crop_size: 8 mirror: true }}
            data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param {{ num_output: 4 kernel_size: 3
                                 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "ip1" type: "InnerProduct" bottom: "conv" top: "ip1"
            inner_product_param {{ num_output: 6 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
    {drop}
    layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
            inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
    """


def make_solver(folder: Path, db, rule: str, batch: int, parallel=None,
                dropout: bool = False) -> Solver:
    """``rule``: the solver type and its settings (base_lr 0.05 unless it gives one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rate = "" if "base_lr" in rule else "base_lr: 0.05"
    sp = config.parse_text(
        f'{rule} {rate} lr_policy: "step" gamma: 0.5 stepsize: 20 weight_decay: 0.001 '
        f'max_iter: 50 random_seed: 5 snapshot_prefix: "{folder}/snap"', pb.SolverParameter())
    sp.train_net_param.CopyFrom(config.parse_text(data_net(db, batch, dropout),
                                                  pb.NetParameter()))
    return Solver(sp, parallel=parallel, metrics=False)
