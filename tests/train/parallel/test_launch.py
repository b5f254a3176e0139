"""Who a process is in a job: the launchers' variables, --gpu lists."""

from __future__ import annotations

import pytest

from netforge.errors import ConfigError, DeviceError
from netforge.train.parallel import launch


@pytest.mark.parametrize("env, expected", [
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, (1, 4, 1)),
    ({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0"}, (3, 4, 0)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"},
     (5, 8, 1)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, (0, 1, 0)),  # a batch script, not a step
    ({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}, (2, 3, 0)),
    ({}, (0, 1, 0)),
])
def test_rank_info_reads_each_launchers_variables(env, expected):
    info = launch.rank_info(env)
    assert (info.rank, info.world, info.local_rank) == expected


def test_rank_info_refuses_a_rank_outside_the_world():
    with pytest.raises(ConfigError, match="rank 4 does not fit a world of 4"):
        launch.rank_info({"RANK": "4", "WORLD_SIZE": "4"})


def test_gpu_lists():
    assert launch.gpu_list("all", 3) == [0, 1, 2]
    assert launch.gpu_list("2,0", 3) == [2, 0]
    with pytest.raises(DeviceError, match="device 5 does not exist"):
        launch.gpu_list("0,5", 2)
    with pytest.raises(ConfigError, match="names a device twice"):
        launch.gpu_list("1,1", 2)

