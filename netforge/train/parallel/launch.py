"""Who this process is in a data-parallel job: rank, world size and local rank.

Read from the variables each launcher sets, first match wins:
  mpirun / mpiexec (Open MPI)   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK
  mpiexec (MPICH / Intel MPI)   PMI_RANK, PMI_SIZE, MPI_LOCALRANKID
  srun (Slurm)                  SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
  torchrun and the like         RANK, WORLD_SIZE, LOCAL_RANK
Slurm's variables are only believed inside a step (SLURM_STEP_ID set): a batch script's own
shell also has SLURM_PROCID=0, SLURM_NTASKS=N without being one of N ranks.

Also here: ``mpiexec_command`` finds the MPI launcher installed with the ``[mpi]`` extra
(beside the running Python), for ``netforge train --gpu 0,1`` to start one rank per GPU.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from netforge.errors import ConfigError, DeviceError


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world: int
    local_rank: int
    source: str  # which launcher's variables said so ("none" for a plain single process)

    @property
    def is_root(self) -> bool:
        return self.rank == 0


_SCHEMES = (
    ("mpirun (Open MPI)", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("mpiexec (MPICH/PMI)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("srun (Slurm)", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("torchrun-style", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
)


def _integer(env, name: str, source: str) -> int:
    text = env[name]
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{source}: {name}={text!r} is not an integer") from None


def rank_info(env=None) -> RankInfo:
    """The rank, world size and local rank this process was started with."""
    env = os.environ if env is None else env
    for source, rank_var, size_var, local_var in _SCHEMES:
        if rank_var not in env or size_var not in env:
            continue
        if rank_var == "SLURM_PROCID" and "SLURM_STEP_ID" not in env:
            continue
        rank = _integer(env, rank_var, source)
        world = _integer(env, size_var, source)
        local = _integer(env, local_var, source) if local_var in env else rank
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"{source}: rank {rank} does not fit a world of {world} "
                              f"({rank_var}, {size_var})")
        return RankInfo(rank, world, local, source)
    return RankInfo(0, 1, 0, "none")


def mpiexec_command() -> str:
    """The mpiexec beside this Python (the ``[mpi]`` extra's), else one on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if found:
        return found
    raise DeviceError("data-parallel training needs an MPI launcher, and no mpiexec was found; "
                      "install the MPI extra: pip install 'netforge[mpi]'")


def gpu_list(text: str, device_count: int) -> list[int]:
    """``--gpu`` as a list of device ids: "0,1" or "all" (every visible device)."""
    if text.strip() == "all":
        return list(range(device_count))
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f'--gpu must be -1, a device id, a list such as 0,1, or "all"; '
                          f'got "{text}"') from None
    if len(set(ids)) != len(ids):
        raise ConfigError(f'--gpu "{text}" names a device twice')
    bad = [i for i in ids if not 0 <= i < device_count]
    if bad:
        raise DeviceError(f"--gpu {text}: device {bad[0]} does not exist "
                          f"({device_count} visible)")
    return ids


def rank_command(gpus: list[int], argv: list[str]) -> list[str]:
    """``mpiexec -n N`` running this netforge once per GPU; each rank picks its device from
    ``NETFORGE_RANK_GPUS`` by its local rank (``device_for_rank``)."""
    return [mpiexec_command(), "-disable-auto-cleanup", "-n", str(len(gpus)),
            "-genv", "NETFORGE_RANK_GPUS", ",".join(map(str, gpus)),
            sys.executable, "-m", "netforge", *argv]


def device_for_rank(info: RankInfo, env=None) -> int | None:
    """The GPU a rank started by ``rank_command`` uses (None when not started so)."""
    env = os.environ if env is None else env
    listed = env.get("NETFORGE_RANK_GPUS")
    if not listed:
        return None
    ids = [int(x) for x in listed.split(",")]
    return ids[info.local_rank % len(ids)]
