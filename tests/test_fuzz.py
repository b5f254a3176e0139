"""A short, derandomized fuzz run over every reader of untrusted bytes (tests/fuzzing.py):
each input loads or raises netforge's one-line error; no other exception, no hang, no
allocation sized by a forged length. ``tools/fuzz.py`` runs the same targets for longer."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests import fuzzing  # noqa: E402

EXAMPLES = 300  # per target: a few seconds each
# Damaged images make Pillow warn as it reads them; the invariant is about what is raised.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

TARGETS = {target.name: target for target in fuzzing.targets()}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_reader_loads_or_raises_one_line(name):
    target = TARGETS[name]
    for seed in target.seeds:  # the seeds themselves load
        assert fuzzing.check(target, seed) == "ok"

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzzing.inputs(target))
    def run(data):
        fuzzing.check(target, data)

    run()


# -- what the fuzzer found, kept as plain regressions ----------------------------------------


def test_negative_sizes_in_datums_and_blobs_are_damage_not_value_errors():
    from netforge import netforge_pb2 as pb
    from netforge.data import records
    from netforge.errors import DataError

    with pytest.raises(DataError, match="empty or negative size"):
        records.datum_to_array(pb.Datum(channels=-1, height=-1, width=1, data=b"x"))
    blob = pb.BlobProto(num=-1, channels=-1, height=1, width=1, data=[1.0])
    with pytest.raises(DataError, match="negative dimension"):
        records.blobproto_to_array(blob)


def test_damaged_resume_state_and_non_utf8_paths_in_a_solverstate(tmp_path):
    from netforge import netforge_pb2 as pb
    from netforge.errors import DataError
    from netforge.train import snapshots

    ws = fuzzing.workspace()
    good = pb.SolverState()
    good.ParseFromString(ws.state_seed())
    broken = pb.SolverState()
    broken.CopyFrom(good)
    broken.resume_state = '{"rng": [{"bit_generator": "MT19937"}]}'
    path = tmp_path / "a.solverstate"
    path.write_bytes(broken.SerializeToString())
    with pytest.raises(DataError, match="damaged resume state"):
        snapshots.restore_state(ws.solver, path)
    raw = good.SerializeToString().replace(b"seed_iter", b"seed\xffiter")
    path.write_bytes(raw)
    with pytest.raises(DataError, match="not a solver state|not UTF-8"):
        snapshots.restore_state(ws.solver, path)


def test_an_image_header_claiming_too_many_pixels_is_refused_before_decoding():
    import struct
    import zlib

    from netforge.data.records import decode_image_bytes
    from netforge.errors import DataError

    png = bytearray(fuzzing._png())
    png[16:24] = struct.pack(">II", 12000, 12000)  # 144 Mpx: under Pillow's own refusal
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    with pytest.raises(DataError, match="claims 12000×12000 pixels"):
        decode_image_bytes(bytes(png))
