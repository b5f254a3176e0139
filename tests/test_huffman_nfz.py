"""Canonical Huffman coding (vs hand-computed codes) and the .nfz weights file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from netforge import huffman, nfz
from netforge import netforge_pb2 as pb
from netforge.errors import DataError


def test_code_lengths_match_a_hand_built_tree():
    # counts a:45 b:13 c:12 d:16 e:9 f:5 (CLRS's example): merge f+e=14, c+b=25, 14+d=30,
    # 25+30=55, a+55=100 -> a:1, b:3, c:3, d:3, e:4, f:4
    lengths = huffman.code_lengths([45, 13, 12, 16, 9, 5])
    assert lengths.tolist() == [1, 3, 3, 3, 4, 4]
    # canonical (DEFLATE): a=0, b=100, c=101, d=110, e=1110, f=1111
    assert huffman.canonical_codes(lengths).tolist() == [0b0, 0b100, 0b101, 0b110, 0b1110,
                                                         0b1111]


def test_encode_packs_codes_msb_first():
    # counts 0:2 1:1 2:1 -> lengths 1,2,2 -> codes 0, 10, 11; stream 0 2 1 0 = 0 11 10 0
    lengths, payload = huffman.encode([0, 2, 1, 0], 3)
    assert lengths.tolist() == [1, 2, 2]
    assert payload == bytes([0b01110000])


def test_single_symbol_stream_uses_one_bit_and_absent_symbols_have_no_code():
    lengths, payload = huffman.encode([3, 3, 3], 5)
    assert lengths.tolist() == [0, 0, 0, 1, 0]
    assert payload == b"\x00"
    assert huffman.decode(lengths, 3, payload).tolist() == [3, 3, 3]


def test_round_trip_and_the_size_equals_the_sum_of_code_lengths():
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.3, size=5000) - 1
    symbols = np.minimum(symbols, 31)
    lengths, payload = huffman.encode(symbols, 32)
    np.testing.assert_array_equal(huffman.decode(lengths, symbols.size, payload), symbols)
    bits = int(lengths[symbols].sum())
    assert len(payload) == (bits + 7) // 8
    # Huffman is within one bit per symbol of the entropy
    p = np.bincount(symbols, minlength=32) / symbols.size
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    assert entropy <= bits / symbols.size < entropy + 1


def test_a_truncated_payload_is_a_clear_error():
    lengths, payload = huffman.encode(np.arange(16) % 5, 5)
    with pytest.raises(DataError, match="payload ends"):
        huffman.decode(lengths, 16, payload[:2])


def _naive_entries(index_map, offset_bits):
    """(gap, symbol) pairs written out one value at a time, fillers included."""
    cap = 2**offset_bits - 1
    entries, gap = [], 0
    for v in index_map.ravel():
        if v < 0:
            gap += 1
            continue
        while gap > cap:
            entries.append((cap, -1))
            gap -= cap + 1
        entries.append((gap, int(v)))
        gap = 0
    return entries


def test_sparse_shared_blob_offsets_and_fillers_match_a_naive_walk():
    rng = np.random.default_rng(1)
    index_map = np.where(rng.uniform(size=(20, 30)) < 0.08, rng.integers(0, 4, (20, 30)), -1)
    index_map[0, :25] = -1  # a gap longer than 2^3 - 1 needs fillers
    codebook = np.array([-0.5, -0.1, 0.2, 0.7], np.float32)
    blob = nfz.sparse_shared_blob(index_map, codebook, offset_bits=3)
    offsets = huffman.decode(blob.offsets.code_lengths, blob.offsets.count, blob.offsets.payload)
    symbols = huffman.decode(blob.clusters.code_lengths, blob.clusters.count,
                             blob.clusters.payload)
    want = _naive_entries(index_map, 3)
    assert list(zip(offsets.tolist(), [s if s < 4 else -1 for s in symbols.tolist()],
                    strict=True)) == want
    dense = np.where(index_map >= 0, codebook[np.maximum(index_map, 0)], 0.0)
    np.testing.assert_array_equal(nfz.decode_blob(blob), dense.astype(np.float32))


def test_nfz_file_header_checksum_and_damage(tmp_path):
    net = nfz.new_net("tiny")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add().CopyFrom(nfz.sparse_shared_blob(np.array([[0, -1, 1]]), [0.5, -2.0], 4))
    layer.blobs.add().CopyFrom(nfz.raw_blob(np.array([1.5, -3.0], np.float32)))
    path = tmp_path / "w.nfz"
    size = nfz.write_nfz(path, net)
    data = path.read_bytes()
    assert size == len(data) and nfz.is_nfz_file(path)
    magic, version, crc = struct.unpack("<4sII", data[:12])
    assert (magic, version, crc) == (b"NFZ\0", 1, zlib.crc32(data[12:]))
    param = nfz.read_as_net_parameter(path)
    assert param.layer[0].name == "ip"
    assert list(param.layer[0].blobs[0].data) == [0.5, 0.0, -2.0]
    assert list(param.layer[0].blobs[1].data) == [1.5, -3.0]

    damaged = bytearray(data)
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="damaged .nfz file .checksum mismatch."):
        nfz.read_nfz(path)
    path.write_bytes(data[:12] + b"\xff\xff")
    with pytest.raises(DataError, match="damaged"):
        nfz.read_nfz(path)
    path.write_bytes(struct.pack("<4sII", b"NFZ\0", 99, 0))
    with pytest.raises(DataError, match="format version 99"):
        nfz.read_nfz(path)


def test_raw_blob_of_wrong_size_is_refused():
    blob = pb.CompressedBlob(shape=[3], raw=b"\x00" * 8)
    with pytest.raises(DataError, match="8 raw bytes for shape"):
        nfz.decode_blob(blob)
