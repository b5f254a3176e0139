#!/usr/bin/env python
"""Regenerate netforge/netforge_pb2.py (and .pyi) from proto/netforge.proto.

Uses the protoc bundled with grpcio-tools (``pip install grpcio-tools``). The
generated module is checked in, so installing netforge never needs protoc; run
this after every edit of the schema:

    python tools/regenerate_proto.py                 # writes netforge/netforge_pb2.py{,i}
    python tools/regenerate_proto.py --output-dir D  # writes D/netforge_pb2.py{,i}

The schema is compiled as ``netforge/netforge.proto`` (from a staging copy) so
that the generated classes report ``__module__ == "netforge.netforge_pb2"``,
which keeps them picklable when imported from the package.

This script is a developer tool; the netforge package never imports it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILE = REPO_ROOT / "proto" / "netforge.proto"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "netforge"
GENERATED = ("netforge_pb2.py", "netforge_pb2.pyi")


def regenerate(output_dir: Path, proto_file: Path = PROTO_FILE, pyi: bool = True) -> list[Path]:
    """Compile ``proto_file`` and write the generated module(s) into ``output_dir``.

    Returns the paths written. Raises RuntimeError if protoc fails.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("grpc_tools is not installed; run `pip install grpcio-tools`") from exc

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="netforge-protoc-") as tmp:
        tmp_path = Path(tmp)
        stage = tmp_path / "src"
        out = tmp_path / "out"
        (stage / "netforge").mkdir(parents=True)
        out.mkdir()
        shutil.copyfile(proto_file, stage / "netforge" / "netforge.proto")
        args = ["grpc_tools.protoc", f"-I{stage}", f"--python_out={out}"]
        if pyi:
            args.append(f"--pyi_out={out}")
        args.append(str(stage / "netforge" / "netforge.proto"))
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit status {rc}")
        written = []
        for name in GENERATED if pyi else GENERATED[:1]:
            dest = output_dir / name
            shutil.copyfile(out / "netforge" / name, dest)
            written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="directory to write netforge_pb2.py into (default: %(default)s)",
    )
    parser.add_argument(
        "--proto", type=Path, default=PROTO_FILE, help="schema file (default: %(default)s)"
    )
    parser.add_argument("--no-pyi", action="store_true", help="do not write the .pyi stub")
    ns = parser.parse_args(argv)
    try:
        written = regenerate(ns.output_dir, ns.proto, pyi=not ns.no_pyi)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
