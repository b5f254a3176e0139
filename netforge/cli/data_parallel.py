"""``netforge train`` in a data-parallel job: join the job the launcher started, or start one.

* Under ``mpirun``/``mpiexec``/``srun`` the environment says this process is one of N ranks:
  ``join_job`` returns its ``DataParallel`` (None for a single process).
* ``--gpu 0,1`` or ``--gpu all`` outside a job: ``launch_gpu_ranks`` starts one rank per GPU
  under the ``[mpi]`` extra's mpiexec and returns its exit status.
* ``ending_the_job_on_failure``: a rank that finds another dead or hung prints one line and
  ends the whole job (MPI_Abort), so that no rank is left waiting.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import click

from netforge import backend
from netforge.errors import ConfigError, DeviceError
from netforge.train.parallel import launch
from netforge.train.parallel.collectives import RankFailure
from netforge.train.parallel.driver import DataParallel, install_failure_notice, quiet_other_ranks


def wants_several_gpus(gpu: str | None) -> bool:
    return gpu is not None and (gpu.strip() == "all" or "," in gpu)


def _visible_gpus(gpu: str) -> int:
    """How many GPUs this process sees; a DeviceError saying why when none is usable."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except ImportError:
        raise DeviceError(f"--gpu {gpu}: data-parallel GPU training needs CuPy "
                          "(pip install 'netforge[gpu,mpi]'); no GPU is usable here") from None
    except Exception as exc:  # no driver, no device
        raise DeviceError(f"--gpu {gpu}: no GPU is usable here ({exc})") from None
    if count == 0:
        raise DeviceError(f"--gpu {gpu}: no GPU is visible here")
    return count


def launch_gpu_ranks(gpu: str, argv: list[str]) -> int:
    """Start ``netforge <argv>`` once per GPU of ``gpu`` (mpiexec); its exit status."""
    gpus = launch.gpu_list(gpu, _visible_gpus(gpu))
    command = launch.rank_command(gpus, argv)
    return subprocess.run(command, check=False).returncode


def join_job(gpu: str | None) -> DataParallel | None:
    """This rank's DataParallel when the launcher started several ranks, else None.

    The rank's GPU: the one ``launch_gpu_ranks`` gave it, or, under mpirun/srun with
    ``--gpu all`` or a list, the list's entry at the rank's local rank."""
    info = launch.rank_info()
    if info.world == 1:
        return None
    device = launch.device_for_rank(info)
    if device is None and wants_several_gpus(gpu):
        gpus = launch.gpu_list(gpu, _visible_gpus(gpu))
        device = gpus[info.local_rank % len(gpus)]
    elif device is None and gpu not in (None, "-1"):
        raise ConfigError(f"--gpu {gpu} under a launcher of {info.world} ranks would put every "
                          "rank on one GPU; give --gpu all or a list (0,1,...): each rank then "
                          "takes the GPU at its local rank")
    if device is not None:
        backend.set_device(device)
        backend.set_mode_gpu()
    else:
        backend.set_mode_cpu()
    quiet_other_ranks(info.rank)
    job = DataParallel.from_environment(info, device_id=device)
    install_failure_notice(info.rank)  # after MPI_Init: MPICH installs a SIGUSR1 handler too
    return job


@contextlib.contextmanager
def ending_the_job_on_failure(job: DataParallel | None):
    try:
        yield
    except RankFailure as exc:
        if job is None:
            raise
        click.echo(f"netforge: error: {exc}", err=True)
        sys.stderr.flush()
        job.comm.abort(1)
