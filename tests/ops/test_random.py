"""Philox4x32-10 (ops/random.py) against Random123's published known answers, chunking
invariance, the uniform and threshold conversions, and the stream state."""

from __future__ import annotations

import numpy as np
import pytest

from netforge.ops import random as philox
from netforge.ops.random import RandomStream, philox4x32, philox_bits, philox_key
from netforge.ops.xp import allocate
from tests.backends import ARRAY_MODULES, host, load

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2
# words), expected output (4 words).
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _workspace(xp, count):
    ws = allocate(philox.philox_workspace_shapes(count), xp)
    ws["iota"][...] = xp.arange(len(ws["iota"]), dtype=xp.uint64)
    return ws


@pytest.mark.parametrize("xp_name", ARRAY_MODULES)
@pytest.mark.parametrize("counter, key, expected", KAT, ids=["zeros", "ones", "pi"])
def test_known_answers_reference_and_workspace_forms(xp_name, counter, key, expected):
    xp = load(xp_name)
    assert [int(w) for w in philox4x32(xp, counter, key)] == list(expected)
    # The hot-path form: the block number is counter word 0, so ask for the 4 numbers at
    # offset 4 * word 0 of a draw whose other words are the rest of the counter.
    bits = philox_bits(_workspace(xp, 4), 4, key=key, words=counter[1:], offset=4 * counter[0])
    assert [int(w) for w in host(bits)] == list(expected)


def _naive_stream(key, words, count):
    """Number i of a draw: lane i % 4 of Philox(block i // 4), one block at a time."""
    out = []
    for i in range(count):
        lanes = philox4x32(np, (i // 4, *words), key)
        out.append(int(lanes[i % 4]))
    return out


def test_draws_equal_the_block_by_block_definition_whatever_the_chunking():
    key, words = (0x12345678, 0x9ABCDEF0), (7, 0xC0FFEE, 1)
    whole = host(philox_bits(_workspace(np, 37), 37, key=key, words=words)).copy()
    assert whole.tolist() == _naive_stream(key, words, 37)
    for cuts in ([5], [1, 2, 3], [4, 8, 31], [13, 14, 35, 36]):
        pieces, start = [], 0
        for stop in [*cuts, 37]:
            ws = _workspace(np, stop - start)
            pieces.append(host(philox_bits(ws, stop - start, key=key, words=words,
                                           offset=start)).copy())
            start = stop
        np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_stream_spanning_several_chunks_matches_one_big_chunk(monkeypatch):
    out_big = RandomStream((3, 4), 5).random(out=np.empty(1000, np.float64))
    monkeypatch.setattr(philox, "CHUNK_BLOCKS", 9)  # 32 numbers a pass
    small = RandomStream((3, 4), 5)
    np.testing.assert_array_equal(small.random(out=np.empty(1000, np.float64)), out_big)
    assert len(small.ws["iota"]) == 9  # it did take many passes


def test_uniforms_are_the_documented_functions_of_the_bits():
    key, count = (11, 22), 400
    words = (0, 99, 0)  # the first draw (counter 0) of stream 99
    bits = host(philox_bits(_workspace(np, count), count, key=key, words=words)).copy()
    u64 = RandomStream(key, 99).random(out=np.empty(count, np.float64))
    u32 = RandomStream(key, 99).random(out=np.empty(count, np.float32))
    np.testing.assert_array_equal(u64, bits.astype(np.float64) / 2.0**32)
    np.testing.assert_array_equal(u32, (bits >> 8).astype(np.float32) / np.float32(2.0**24))
    assert 0.0 <= u64.min() and u64.max() < 1.0 and u32.max() < 1.0
    mask = np.empty(count, bool)
    RandomStream(key, 99).uniform_at_least(mask, 0.3)
    np.testing.assert_array_equal(mask, u64 >= 0.3)


def test_moments_and_successive_draws_differ():
    stream = RandomStream(philox_key(5), 1)
    a = stream.random(out=np.empty(200_000))
    b = stream.random(out=np.empty(200_000))
    assert abs(a.mean() - 0.5) < 0.005 and abs(a.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    assert int(stream.draws) == 2


def test_state_round_trip_resumes_the_stream():
    stream = RandomStream(philox_key(8, 1), 42)
    stream.random(out=np.empty(10))
    saved = stream.get_state()
    expected = stream.random(out=np.empty(10))
    other = RandomStream((0, 0), 42)
    other.set_state(saved)
    np.testing.assert_array_equal(other.random(out=np.empty(10)), expected)


def test_keys_of_nets_and_seeds_differ():
    keys = {philox_key(seed, net) for seed in (0, 1, 2**40) for net in (0, 1, 2)}
    assert len(keys) == 9


@pytest.mark.gpu
def test_cupy_draws_equal_numpy_draws():
    cupy = load("cupy")
    for dtype in (np.float32, np.float64):
        on_host = RandomStream((1, 2), 3, np).random(out=np.empty((7, 300), dtype))
        on_device = RandomStream((1, 2), 3, cupy).random(out=cupy.empty((7, 300), dtype))
        np.testing.assert_array_equal(on_device.get(), on_host)


# -- data-parallel streams: each rank draws its own rows of the global draw ------------------------
@pytest.mark.parametrize("row_shape", [(2, 4), (5,), (3, 1, 1), (12,)])
@pytest.mark.parametrize("chunk_blocks", [philox.CHUNK_BLOCKS, 5])  # 5: rows span passes
def test_sharded_streams_draw_their_rows_of_the_whole_batch(monkeypatch, row_shape,
                                                            chunk_blocks):
    monkeypatch.setattr(philox, "CHUNK_BLOCKS", chunk_blocks)
    world, rows = 3, 4
    whole = RandomStream((9, 10), 77)
    ranks = [RandomStream((9, 10), 77) for _ in range(world)]
    for rank, stream in enumerate(ranks):
        stream.shard(rank, world)
    for _ in range(2):  # the second draw too: the counter advances alike
        expected = whole.random(out=np.empty((rows * world, *row_shape), np.float64))
        mask = np.empty((rows * world, *row_shape), bool)
        for rank, stream in enumerate(ranks):
            got = stream.random(out=np.empty((rows, *row_shape), np.float64))
            np.testing.assert_array_equal(got, expected[rank::world])
        # uniform_at_least walks the same pieces (its own draw, the next counter)
        whole.uniform_at_least(mask, 0.4)
        for rank, stream in enumerate(ranks):
            mine = np.empty((rows, *row_shape), bool)
            stream.uniform_at_least(mine, 0.4)
            np.testing.assert_array_equal(mine, mask[rank::world])


def test_a_sharded_row_is_the_definitions_numbers_of_its_global_row():
    key, width, world = (5, 6), 6, 2
    stream = RandomStream(key, 3)
    stream.shard(1, world)
    bits = stream.random(out=np.empty((3, width), np.float64)) * 2.0**32
    naive = np.array(_naive_stream(key, (0, 3, 0), 6 * width), np.float64).reshape(6, width)
    np.testing.assert_array_equal(bits, naive[1::2])  # global rows 1, 3, 5
