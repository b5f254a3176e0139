"""Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11; Random123) as xp code.

Why counter-based: the n-th number of a stream is a pure function of (key, counter), so
the same code gives the same bits on numpy and CuPy, a draw needs no host-side generator
(nothing to read back, nothing for a CUDA-graph capture to refuse), and the whole state of
a stream is two integers — the key and how many draws it has made — which a snapshot
stores and a resume restores exactly.

    philox4x32(xp, counter, key, rounds=10) -> 4 uint64 arrays (values < 2**32)
    philox_key(seed, net_id) -> (k0, k1)
    philox_workspace_shapes(count) -> spec             the scratch of one chunk
    philox_bits(ws, count, *, key, words, offset=0) -> uint64 view of ``count`` words
    RandomStream(key, stream, xp)                      one consumer's stream (a layer's)
        .shard(rank, world)                            data-parallel: this rank's rows only
        .random(out=array)                             U[0, 1), numpy-Generator-shaped
        .uniform_at_least(mask, threshold)             mask (bool) = u >= threshold, no floats

Counter layout of draw ``d`` (the stream's d-th call) of stream ``s``: word 0 is the block
(four numbers per block), word 1 the low and word 3 the high 32 bits of ``d``, word 2 the
stream id. Number ``i`` of a draw is lane ``i % 4`` of block ``i // 4``, so a draw computed
in chunks (``offset``) is bit-identical to one computed whole.

Uniforms: float32 takes the top 24 bits (``(u >> 8) * 2**-24``), float64 all 32
(``u * 2**-32``); both are exact and lie in [0, 1).
"""

from __future__ import annotations

import zlib
from types import ModuleType

import numpy

from netforge.ops.xp import Array, WorkspaceSpec, get_array_module

MASK32 = 0xFFFFFFFF
_M0, _M1 = numpy.uint64(0xD2511F53), numpy.uint64(0xCD9E8D57)  # Philox multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
_LOW = numpy.uint64(MASK32)
_32 = numpy.uint64(32)
# Blocks computed per pass: bounds the scratch (48 bytes a block) whatever the draw's size.
CHUNK_BLOCKS = 1 << 15


def philox4x32(xp: ModuleType, counter, key: tuple[int, int], rounds: int = 10):
    """Philox4x32-R of ``counter`` (4 words: ints or uint64 arrays, each < 2**32) under
    ``key`` (2 ints); returns the 4 output words as uint64 arrays. The reference form
    (allocates); ``philox_bits`` is the workspace form used on the hot path."""
    c = [xp.asarray(w, dtype=xp.uint64) & _LOW for w in counter]
    k0, k1 = int(key[0]) & MASK32, int(key[1]) & MASK32
    for r in range(rounds):
        ka, kb = numpy.uint64((k0 + r * _W0) & MASK32), numpy.uint64((k1 + r * _W1) & MASK32)
        p0, p1 = c[0] * _M0, c[2] * _M1  # 32 x 32 -> 64 bits: exact in uint64
        c = [(p1 >> _32) ^ c[1] ^ ka, p1 & _LOW, (p0 >> _32) ^ c[3] ^ kb, p0 & _LOW]
    return c


def philox_key(seed: int, net_id: int = 0) -> tuple[int, int]:
    """The 2-word key of a net's streams: the seed's two halves, the high one mixed with the
    net's index (train net 0, test net i + 1) so that nets never share a stream."""
    seed = int(seed) & ((1 << 64) - 1)
    return seed & MASK32, ((seed >> 32) ^ (int(net_id) * _W1)) & MASK32


def stream_id(name: str) -> int:
    """A stable 32-bit stream id for a layer name (crc32: the same in every process)."""
    return zlib.crc32(name.encode("utf-8")) & MASK32


def philox_workspace_shapes(count: int) -> WorkspaceSpec:
    """Scratch for draws of up to ``count`` numbers: the 4-word state and 2 products of
    each block of one chunk, plus the block numbers 0..chunk-1."""
    blocks = min(-(-int(count) // 4) + 1, CHUNK_BLOCKS)
    return {"state": ((blocks, 4), numpy.dtype(numpy.uint64)),
            "prod": ((2, blocks), numpy.dtype(numpy.uint64)),
            "iota": ((blocks,), numpy.dtype(numpy.uint64))}


def philox_bits(ws: dict, count: int, *, key: tuple[int, int], words, offset: int = 0,
                block_numbers: Array | None = None) -> Array:
    """The ``count`` (≤ what one chunk holds) 32-bit numbers ``offset .. offset+count-1`` of
    the draw whose counter words 1..3 are ``words`` (ints, or 0-d uint64 device arrays),
    as a uint64 view into ``ws["state"]`` (valid until the next call).

    ``block_numbers`` (uint64, ``count / 4`` of them; ``offset`` 0): the blocks to compute
    instead of consecutive ones, so that one call gathers whole blocks from anywhere in the
    draw (a data-parallel rank's rows, ``RandomStream.shard``)."""
    state, prod, iota = ws["state"], ws["prod"], ws["iota"]
    first, skip = divmod(int(offset), 4)
    blocks = -(-(skip + int(count)) // 4)
    if blocks > len(iota):
        raise ValueError(f"philox_bits: {count} numbers need {blocks} blocks, the workspace "
                         f"holds {len(iota)}")
    xp = get_array_module(state)
    s = state[:blocks]
    c = [s[:, 0], s[:, 1], s[:, 2], s[:, 3]]
    p0, p1 = prod[0, :blocks], prod[1, :blocks]
    if block_numbers is not None:
        xp.copyto(c[0], block_numbers)
    else:
        xp.add(iota[:blocks], numpy.uint64(first), out=c[0])
    for word, column in zip(words, c[1:], strict=True):
        if isinstance(word, int):
            column.fill(word & MASK32)
        else:
            xp.copyto(column, word)
    k0, k1 = int(key[0]) & MASK32, int(key[1]) & MASK32
    for r in range(10):
        ka, kb = numpy.uint64((k0 + r * _W0) & MASK32), numpy.uint64((k1 + r * _W1) & MASK32)
        xp.multiply(c[0], _M0, out=p0)
        xp.multiply(c[2], _M1, out=p1)
        # new (c0, c1, c2, c3) = (hi(p1) ^ c1 ^ ka, lo(p1), hi(p0) ^ c3 ^ kb, lo(p0)); each
        # word is read before it is overwritten.
        xp.right_shift(p1, _32, out=c[0])
        xp.bitwise_xor(c[0], c[1], out=c[0])
        xp.bitwise_xor(c[0], ka, out=c[0])
        xp.bitwise_and(p1, _LOW, out=c[1])
        xp.right_shift(p0, _32, out=c[2])
        xp.bitwise_xor(c[2], c[3], out=c[2])
        xp.bitwise_xor(c[2], kb, out=c[2])
        xp.bitwise_and(p0, _LOW, out=c[3])
    return s.reshape(-1)[skip:skip + int(count)]


class RandomStream:
    """One consumer's Philox stream (a layer's): key, stream id and a draw counter that lives
    on the compute device (a 0-d uint64 array, advanced there), so a draw never reads the
    host and a replayed CUDA graph draws fresh numbers each time.

    ``random(out=...)`` has numpy's ``Generator.random`` shape, so kernels written for a
    numpy Generator (tests pass one) take a stream unchanged.
    """

    def __init__(self, key: tuple[int, int], stream: int, xp: ModuleType = numpy):
        self.key = (int(key[0]) & MASK32, int(key[1]) & MASK32)
        self.stream = int(stream) & MASK32
        self.xp = xp
        self.draws = xp.zeros((), dtype=xp.uint64)
        self._words = (xp.zeros((), dtype=xp.uint64), self.stream, xp.zeros((), dtype=xp.uint64))
        self.ws: dict | None = None
        self.rank, self.world = 0, 1
        self._pieces: dict = {}  # draw shape -> where a sharded draw's numbers come from

    def shard(self, rank: int, world: int) -> None:
        """Data-parallel drawing: from now on a draw into an array of n rows (axis 0, the
        batch) gives rows ``rank, rank + world, ...`` of the same draw into n × world rows:
        the numbers rank ``rank`` would see, as one process, for the records it reads
        (``PrefetchingLayer.shard``). So each rank draws other masks, and N ranks draw
        exactly what one process with the N-times batch draws."""
        self.rank, self.world = int(rank), int(world)
        self._pieces.clear()

    def _shard_pieces(self, shape: tuple[int, ...]) -> list:
        """(local start, count, global offset, block numbers or None) per chunk of a sharded
        draw into ``shape``, made once per shape. Rows of whole blocks (a multiple of 4
        numbers) are gathered several rows a call by block numbers; other rows are computed
        one contiguous range at a time."""
        rows = int(shape[0])
        width = int(numpy.prod(shape[1:], dtype=numpy.int64))
        per = (len(self.ws["iota"]) - 1) * 4
        pieces = []
        if width % 4 == 0 and 0 < width <= per:
            quads, rows_per = width // 4, per // width
            for lo in range(0, rows, rows_per):
                hi = min(rows, lo + rows_per)
                first = (numpy.arange(lo, hi, dtype=numpy.uint64) * self.world + self.rank)
                numbers = first[:, None] * numpy.uint64(quads) + numpy.arange(
                    quads, dtype=numpy.uint64)
                pieces.append((lo * width, (hi - lo) * width, 0,
                               self.xp.asarray(numbers.reshape(-1))))
            return pieces
        for row in range(rows):
            origin = (row * self.world + self.rank) * width
            for start in range(0, width, per):
                n = min(per, width - start)
                pieces.append((row * width + start, n, origin + start, None))
        return pieces

    # -- state (read only at snapshot time) -------------------------------------------------
    def get_state(self) -> dict:
        from netforge.backend import to_host

        return {"key": list(self.key), "stream": self.stream,
                "draws": int(to_host(self.draws))}

    def set_state(self, state: dict) -> None:
        self.key = tuple(int(k) & MASK32 for k in state["key"])
        self.draws[...] = int(state["draws"])

    def reserve(self, count: int) -> None:
        """Allocate the chunk scratch for draws of ``count`` numbers (at reshape time)."""
        spec = philox_workspace_shapes(count)
        have = self.ws["iota"].shape[0] if self.ws is not None else 0
        blocks = spec["iota"][0][0]
        if blocks > have:
            self.ws = {name: self.xp.empty(shape, dtype=dtype)
                       for name, (shape, dtype) in spec.items()}
            self.xp.copyto(self.ws["iota"], self.xp.arange(blocks, dtype=self.xp.uint64))

    # -- draws ------------------------------------------------------------------------------
    def _chunks(self, shape: tuple[int, ...]):
        """(start, bits) per chunk of the next draw into an array of ``shape``, then advance
        the counter (on device)."""
        xp = self.xp
        count = int(numpy.prod(shape, dtype=numpy.int64))
        self.reserve(min(count, CHUNK_BLOCKS * 4 - 4))
        lo, _, hi = self._words
        xp.bitwise_and(self.draws, _LOW, out=lo)
        xp.right_shift(self.draws, _32, out=hi)
        if self.world > 1 and len(shape) > 0 and count:
            key = tuple(shape)
            if key not in self._pieces:
                self._pieces[key] = self._shard_pieces(key)
            for start, n, origin, numbers in self._pieces[key]:
                yield start, philox_bits(self.ws, n, key=self.key, words=self._words,
                                         offset=origin, block_numbers=numbers)
        else:
            per = (len(self.ws["iota"]) - 1) * 4
            for start in range(0, count, per):
                n = min(per, count - start)
                yield start, philox_bits(self.ws, n, key=self.key, words=self._words,
                                         offset=start)
        xp.add(self.draws, numpy.uint64(1), out=self.draws)

    def random(self, size=None, dtype=numpy.float64, out: Array | None = None) -> Array:
        """U[0, 1) numbers into ``out`` (float32 or float64), or a new array of ``size``."""
        if out is None:
            out = self.xp.empty(size if size is not None else (), dtype=dtype)
        if not out.flags.c_contiguous:
            raise ValueError("RandomStream.random needs a C-contiguous out")
        flat = out.reshape(-1)
        xp = self.xp
        for start, bits in self._chunks(out.shape):
            piece = flat[start:start + bits.size]
            if out.dtype == numpy.float32:
                xp.right_shift(bits, numpy.uint64(8), out=bits)
                xp.copyto(piece, bits, casting="unsafe")
                xp.multiply(piece, numpy.float32(2.0 ** -24), out=piece)
            else:
                xp.copyto(piece, bits, casting="unsafe")
                xp.multiply(piece, out.dtype.type(2.0 ** -32), out=piece)
        return out

    def uniform_at_least(self, mask: Array, threshold: float) -> None:
        """``mask`` (bool) = u >= threshold for this draw's float64-resolution uniforms
        u = w * 2**-32, compared as integers (w >= ceil(threshold * 2**32)): no float
        scratch, one byte per number."""
        bound = numpy.uint64(min(int(numpy.ceil(threshold * 2.0 ** 32)), 1 << 32))
        if not mask.flags.c_contiguous:
            raise ValueError("RandomStream.uniform_at_least needs a C-contiguous mask")
        flat = mask.reshape(-1)
        for start, bits in self._chunks(mask.shape):
            self.xp.greater_equal(bits, bound, out=flat[start:start + bits.size])
