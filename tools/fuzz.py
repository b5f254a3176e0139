"""The long fuzz run: every reader of untrusted bytes (tests/fuzzing.py) for a time budget.

    PYTHONPATH=. python tools/fuzz.py --seconds 60            # each target, 60 s
    PYTHONPATH=. python tools/fuzz.py --seconds 600 --only image datum

Prints, per target, the inputs tried, how many loaded and how many were refused with
netforge's one-line error, and the distinct code lines reached (Python line coverage of
netforge while fuzzing, when ``coverage`` is installed). A finding stops that target with
the input saved under ``fuzz-findings/`` and exit status 1. The CI run (tests/test_fuzz.py)
uses the same targets, derandomized, for a few seconds each.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import HypothesisException  # noqa: E402

from tests import fuzzing  # noqa: E402

warnings.filterwarnings("ignore", module="PIL")  # damaged images warn as they are read


class _Stop(Exception):
    pass


def fuzz_target(target, seconds: float, seed: int, findings: Path) -> dict:
    counts = {"tried": 0, "ok": 0, "error": 0}
    deadline = time.monotonic() + seconds
    found = {}

    @settings(max_examples=10**9, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=["generate"])
    @given(fuzzing.inputs(target))
    def run(data):
        if time.monotonic() > deadline:
            raise _Stop
        counts["tried"] += 1
        try:
            counts[fuzzing.check(target, data, measure_memory=counts["tried"] % 4 == 0)] += 1
        except fuzzing.Finding as exc:
            found.setdefault("first", (str(exc), data))
            raise

    import random

    random.seed(seed)
    try:
        run()
    except _Stop:
        pass
    except (fuzzing.Finding, HypothesisException, Exception) as exc:  # noqa: BLE001
        if isinstance(exc, _Stop):
            pass
        elif "first" not in found:
            found["first"] = (f"{type(exc).__name__}: {exc}", b"")
    if "first" in found:
        message, data = found["first"]
        findings.mkdir(exist_ok=True)
        name = findings / f"{target.name}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
        name.write_bytes(data)
        counts["finding"] = f"{message} (input saved to {name})"
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per target")
    parser.add_argument("--only", nargs="*", help="target names (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    parser.add_argument("--coverage", action="store_true",
                        help="measure netforge's line coverage while fuzzing (slower)")
    args = parser.parse_args(argv)

    cov = None
    if args.coverage:
        import coverage

        cov = coverage.Coverage(source=["netforge"], data_file=None)
        cov.start()
    targets = [t for t in fuzzing.targets() if not args.only or t.name in args.only]
    failed = False
    print(f"{'target':<16} {'inputs':>8} {'loaded':>8} {'refused':>8}  result")
    for target in targets:
        counts = fuzz_target(target, args.seconds, args.seed, args.findings)
        result = counts.get("finding", "no finding")
        failed |= "finding" in counts
        print(f"{target.name:<16} {counts['tried']:>8} {counts['ok']:>8} {counts['error']:>8}"
              f"  {result}", flush=True)
    if cov is not None:
        cov.stop()
        data = cov.get_data()
        lines = sum(len(data.lines(f) or []) for f in data.measured_files())
        print(f"netforge lines reached while fuzzing: {lines} in "
              f"{len(data.measured_files())} files")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
