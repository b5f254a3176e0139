"""Canonical Huffman coding of small-alphabet integer streams (the .nfz weights format).

Why not a library: the well-known pure-Python coders (dahuffman and the like) store their
code table as a pickle or in their own layout; a canonical code is described by its code
lengths alone, which the .nfz format (proto/netforge.proto, HuffmanStream) documents and any
reader can rebuild. The rule is DEFLATE's (RFC 1951 §3.2.2): symbols sorted by (length,
symbol) get consecutive codes, shifted left whenever the length grows.

Encoding and the window reads are numpy-vectorised; decoding walks symbol by symbol.
"""

from __future__ import annotations

import heapq

import numpy as np

from netforge.errors import DataError


def code_lengths(counts) -> np.ndarray:
    """Huffman code length per symbol (0 for symbols that never occur).

    Merges the two lightest trees until one is left (ties broken by symbol order so the
    result is deterministic); a stream of one distinct symbol gets a 1-bit code.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    present = [int(s) for s in np.flatnonzero(counts)]
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    # heap of (weight, tie-breaker, symbols in the subtree)
    heap = [(int(counts[s]), s, [s]) for s in present]
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, t1, s1 = heapq.heappop(heap)
        w2, t2, s2 = heapq.heappop(heap)
        for s in s1 + s2:  # every symbol under the new node sinks one level
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), s1 + s2))
    return lengths


def canonical_codes(lengths) -> np.ndarray:
    """The canonical code of each symbol (as an integer of ``lengths[s]`` bits)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - previous
        codes[s] = code
        previous = int(lengths[s])
        code += 1
    return codes


def encode(symbols, n_symbols: int) -> tuple[np.ndarray, bytes]:
    """(code lengths, payload) of ``symbols`` (integers in [0, n_symbols))."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    lengths = code_lengths(np.bincount(symbols, minlength=n_symbols))
    if symbols.size == 0:
        return lengths, b""
    codes = canonical_codes(lengths)
    sym_len, sym_code = lengths[symbols], codes[symbols]
    total = int(sym_len.sum())
    starts = np.cumsum(sym_len) - sym_len
    position_in_code = np.arange(total) - np.repeat(starts, sym_len)
    shift = np.repeat(sym_len, sym_len) - 1 - position_in_code
    bits = (np.repeat(sym_code, sym_len) >> shift) & 1
    return lengths, np.packbits(bits.astype(np.uint8)).tobytes()


def decode(lengths, count: int, payload: bytes, where: str = "Huffman stream") -> np.ndarray:
    """The ``count`` symbols coded in ``payload`` with the canonical code of ``lengths``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.size == 0 or lengths.max() <= 0 or lengths.max() > 62 or lengths.min() < 0:
        raise DataError(f"{where}: damaged code lengths")
    max_len = int(lengths.max())
    order = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
    codes = canonical_codes(lengths)
    # per length: the first code, where its symbols start in ``order``, how many
    first_code, first_index, n_of = {}, {}, {}
    for rank, s in enumerate(order):
        length = int(lengths[s])
        if length not in n_of:
            first_code[length], first_index[length], n_of[length] = int(codes[s]), rank, 0
        n_of[length] += 1
    used = sorted(n_of)
    bits = np.unpackbits(np.frombuffer(payload, np.uint8)).astype(np.int64)
    padded = np.concatenate([bits, np.zeros(max_len, np.int64)])
    # window[p]: the max_len bits from position p, as an integer
    window = np.zeros(bits.size + 1, np.int64)
    for j in range(max_len):
        window = (window << 1) | padded[j:j + bits.size + 1]
    out = np.empty(count, dtype=np.int64)
    order = np.asarray(order)
    p = 0
    window = window.tolist()
    for i in range(count):
        if p >= bits.size:
            raise DataError(f"{where}: the payload ends after {i} of {count} symbols")
        w = window[p]
        for length in used:
            offset = (w >> (max_len - length)) - first_code[length]
            if 0 <= offset < n_of[length]:
                out[i] = order[first_index[length] + offset]
                p += length
                break
        else:
            raise DataError(f"{where}: damaged payload (no code matches at bit {p})")
    if p > bits.size:
        raise DataError(f"{where}: the payload ends inside the last code")
    return out
