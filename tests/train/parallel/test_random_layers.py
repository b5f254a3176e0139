"""Random layers under data-parallel training: each rank draws the masks of its own records
(rows rank, rank + N, ... of the global batch), so ranks differ from one another and N ranks
together draw exactly the masks one process draws for the N-times batch."""

from __future__ import annotations

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.net import Net


def _net(batch: int, layer: str) -> Net:
    return Net(config.parse_text(f"""
        layer {{ name: "in" type: "Input" top: "x"
                input_param {{ shape {{ dim: {batch} dim: 3 dim: 4 dim: 4 }} }} }}
        {layer}
        """, pb.NetParameter()), "train", random_key=(123, 456))


DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "x" top: "y" }'
STOCHASTIC = ('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param { '
              'pool: STOCHASTIC kernel_size: 2 stride: 2 } }')


@pytest.mark.parametrize("layer", [DROPOUT, STOCHASTIC])
def test_two_sharded_ranks_draw_the_rows_of_one_process_with_twice_the_batch(layer):
    rows, world = 5, 2
    x = np.random.default_rng(0).uniform(0.1, 1.0, (rows * world, 3, 4, 4)).astype(np.float32)
    whole = _net(rows * world, layer)
    ranks = [_net(rows, layer) for _ in range(world)]
    for rank, net in enumerate(ranks):
        for each in net.layers:
            each.shard(rank, world)
    for _ in range(3):  # successive iterations: the streams advance alike
        whole.blobs["x"].data[...] = x
        expected = np.array(whole.forward()["y"])
        got = []
        for rank, net in enumerate(ranks):
            net.blobs["x"].data[...] = x[rank::world]  # its records, as the Data layer reads
            got.append(np.array(net.forward()["y"]))
        for rank in range(world):
            np.testing.assert_array_equal(got[rank], expected[rank::world])
        # Not one mask for all ranks: the ranks' samples of the same input differ.
        ranks[1].blobs["x"].data[...] = x[0::world]
        assert not np.array_equal(np.array(ranks[1].forward()["y"]), got[0])
        ranks[1].layers[-1].random.draws -= 1  # undo that extra draw
