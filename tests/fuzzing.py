"""Fuzz targets for every reader of untrusted bytes, shared by the short CI run
(tests/test_fuzz.py) and the long runner (tools/fuzz.py).

The invariant, for every input: the reader returns, or raises a ``NetforgeError`` whose
message is one line. Any other exception, a hang (``TIME_LIMIT_S``) or an allocation out of
proportion to the input (``allocation_limit``) is a finding. Inputs are random bytes/text
and mutations (flips, cuts, splices, inserted varints) of valid seed files, so the parsers'
deep paths are reached, not only their first length check.
"""

from __future__ import annotations

import contextlib
import io
import signal
import tempfile
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from netforge import netforge_pb2 as pb
from netforge.errors import NetforgeError

TIME_LIMIT_S = 10.0
ROOT = Path(__file__).resolve().parents[1]


class Finding(AssertionError):
    """An input that broke the invariant."""


def allocation_limit(data: bytes) -> int:
    """Peak bytes a reader may allocate for ``data``: generous for legitimate decoding (an
    image decompresses, a float list widens), far below what a forged length would ask."""
    return 96 * 2**20 + 400 * len(data)


@contextlib.contextmanager
def _time_limit(seconds: float):
    def expire(signum, frame):
        raise Finding(f"no result after {seconds:g} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(target, data: bytes, *, measure_memory: bool = True) -> str:
    """Run ``target`` on ``data`` under the invariant; returns "ok" or "error"."""
    if measure_memory:
        tracemalloc.start()
    try:
        with _time_limit(TIME_LIMIT_S):
            target.run(data)
        outcome = "ok"
    except NetforgeError as exc:
        if "\n" in str(exc) or not str(exc).strip():
            raise Finding(f"{target.name}: error message is not one line: {str(exc)!r}") from exc
        outcome = "error"
    except Finding:
        raise
    except BaseException as exc:
        raise Finding(f"{target.name}: {type(exc).__name__}: {exc}") from exc
    finally:
        if measure_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    if measure_memory and peak > allocation_limit(data):
        raise Finding(f"{target.name}: {peak / 2**20:.0f} MiB allocated for {len(data)} input "
                      "bytes (an allocation sized by a length field?)")
    return outcome


# -- seeds -----------------------------------------------------------------------------------

TINY_NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def _png(gray: bool = False) -> bytes:
    from PIL import Image

    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    image = Image.fromarray(pixels[..., 0] if gray else pixels)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 90, np.uint8)).save(out, format=fmt)
    return out.getvalue()


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: object  # callable(bytes) -> None
    text: bool = False  # inputs are text (mutated as text too)
    structured: object = None  # a strategy of well-formed messages with hostile values


class _Workspace:
    """Files and objects the targets share: one temporary folder, one tiny net, one solver."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="netforge-fuzz-"))
        self.net_path = self.dir / "tiny.prototxt"
        self.net_path.write_text(TINY_NET)
        from netforge.net import Net

        self.net = Net(str(self.net_path), "test", seed=0)
        self.caffemodel = self.dir / "tiny.caffemodel"
        self.net.save(str(self.caffemodel))
        self._solver = None

    def file(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    @property
    def solver(self):
        if self._solver is None:
            from netforge.train.solver import Solver

            param = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", momentum=0.9,
                                       max_iter=1, snapshot_prefix=str(self.dir / "snap"))
            train = TINY_NET + ('layer { name: "loss" type: "Reduction" bottom: "prob" '
                                'top: "loss" loss_weight: 1 }\n')
            from netforge import config

            param.train_net_param.CopyFrom(config.parse_text(train, pb.NetParameter()))
            self._solver = Solver(param, metrics=False)
        return self._solver

    def state_seed(self) -> bytes:
        solver = self.solver
        solver.snapshots.prefix = self.dir / "seed"
        _, state = solver.snapshots.write()
        return Path(state).read_bytes()


_WORKSPACE: list[_Workspace] = []


def workspace() -> _Workspace:
    if not _WORKSPACE:
        _WORKSPACE.append(_Workspace())
    return _WORKSPACE[0]


def targets() -> list[Target]:
    from netforge import config
    from netforge.data import records
    from netforge.deploy import frozen
    from netforge.deploy.preprocess import Preprocess
    from netforge.train import snapshots
    from netforge.weights import copy_into

    ws = workspace()

    def prototxt(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        net = config.parse_text(text, pb.NetParameter(), "fuzz.prototxt")
        layer_field = "layers" if len(net.layers) and not len(net.layer) else "layer"
        written = len(getattr(net, layer_field))
        config.upgrade_net(net, "fuzz.prototxt")
        config.validate_net(net, "fuzz.prototxt", text, layer_field, len(net.layer) - written)
        config.filter_net(net, config.make_state("TEST"), "fuzz.prototxt")

    def solver_prototxt(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        solver = config.upgrade_solver_param(
            config.parse_text(text, pb.SolverParameter(), "fuzz_solver.prototxt"))
        config.validate_solver(solver, "fuzz_solver.prototxt", text)

    def caffemodel(data: bytes) -> None:
        copy_into(ws.net, ws.file("fuzz.caffemodel", data))

    def solverstate(data: bytes) -> None:
        snapshots.restore_state(ws.solver, ws.file("fuzz.solverstate", data))

    def binaryproto(data: bytes) -> None:
        records.load_mean_file(ws.file("fuzz.binaryproto", data))

    def frozen_model(data: bytes) -> None:
        path = ws.file("fuzz.nf", data)
        if frozen.is_frozen_file(path):
            frozen.load_frozen(path)

    def datum(data: bytes) -> None:
        records.datum_to_array(records.parse_datum(data, "fuzz record"))

    def image(data: bytes) -> None:
        records.decode_image_bytes(data, color=True, where="fuzz image")

    mean = records.array_to_blobproto(np.ones((1, 3, 4, 4), np.float32)).SerializeToString()
    frozen_path = ws.dir / "seed.nf"
    if not frozen_path.exists():
        frozen.freeze(ws.net_path, ws.caffemodel, frozen_path, Preprocess(), overwrite=True)
    datums = [records.array_to_datum(np.arange(12, dtype=np.uint8).reshape(3, 2, 2), 4),
              records.array_to_datum(np.zeros((1, 2, 2), np.float32), 1),
              records.array_to_datum(np.zeros((3, 4, 4), np.uint8), 2, encoded_bytes=_png())]
    lenet = (ROOT / "configs" / "lenet_train_test.prototxt").read_bytes()
    v1 = (b'name: "v1"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 4\ninput_dim: 4\n'
          b'layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1\n'
          b"  inner_product_param { num_output: 2 } }\n")
    solver_text = (ROOT / "configs" / "lenet_solver.prototxt").read_bytes()
    return [
        Target("prototxt", [lenet, TINY_NET.encode(), v1], prototxt, text=True),
        Target("solver_prototxt", [solver_text, b'type: "Adam"\nlr_policy: "multistep"\n'
                                   b"stepvalue: [1, 2]\ngamma: 0.1\n"], solver_prototxt,
               text=True),
        Target("caffemodel", [ws.caffemodel.read_bytes()], caffemodel,
               structured=hostile_caffemodel()),
        Target("solverstate", [ws.state_seed()], solverstate),
        Target("binaryproto", [mean], binaryproto,
               structured=hostile_blob().map(lambda b: b.SerializeToString())),
        Target("frozen_nf", [frozen_path.read_bytes()], frozen_model),
        Target("datum", [d.SerializeToString() for d in datums], datum,
               structured=hostile_datum()),
        Target("image", [_png(), _png(gray=True), _image_bytes("JPEG"), _image_bytes("GIF"),
                         _image_bytes("BMP"), _image_bytes("TIFF")], image),
    ]


# -- inputs ----------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def mutated(draw, seeds: list[bytes], text: bool = False):
    """A seed with a few random edits: byte flips, cuts, duplicated or deleted spans,
    inserted varints (huge lengths, negative numbers) or, for text, inserted tokens."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "dup", "delete", "varint", "token",
                                     "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:at]
        elif kind == "dup":
            end = draw(st.integers(at, min(len(data), at + 64)))
            data[at:at] = data[at:end]
        elif kind == "delete":
            end = draw(st.integers(at, min(len(data), at + 16)))
            del data[at:end]
        elif kind == "varint":
            value = draw(st.sampled_from([0, 1, 127, 128, 2**31 - 1, 2**31, 2**32 - 1,
                                          2**63 - 1, -1, -(2**31)]))
            data[at:at] = _varint(value)
        elif kind == "token" and text:
            token = draw(st.sampled_from([b"{", b"}", b"<", b">", b":", b"[", b"]", b",",
                                          b'"', b"#", b"\n", b"-1", b"0", b"1e39", b"nan",
                                          b"inf", b"99999999999999999999", b"layer {",
                                          b"dim: 100000000", b"num_output: 0", b"\\",
                                          b"kernel_size: 0", b"stride: 0", b"type: \"X\""]))
            data[at:at] = token
    return bytes(data)


_DIM = st.one_of(st.integers(-3, 8), st.sampled_from([-(2**31), 2**31 - 1, 2**40, -1]))


@st.composite
def hostile_blob(draw) -> pb.BlobProto:
    """A BlobProto whose declared shape (modern or legacy) and values need not agree."""
    blob = pb.BlobProto()
    if draw(st.booleans()):
        blob.shape.dim.extend(draw(st.lists(_DIM, max_size=5)))
    else:
        for name in ("num", "channels", "height", "width"):
            if draw(st.booleans()):
                setattr(blob, name, max(min(draw(_DIM), 2**31 - 1), -(2**31)))
    values = draw(st.lists(st.floats(width=32), max_size=64))
    if draw(st.booleans()):
        blob.data.extend(values)
    else:
        blob.double_data.extend(values)
    return blob


@st.composite
def hostile_datum(draw) -> bytes:
    size = st.one_of(st.integers(-3, 8), st.sampled_from([-(2**31), 2**31 - 1, -1]))
    datum = pb.Datum(channels=draw(size), height=draw(size), width=draw(size),
                     label=draw(st.integers(-(2**31), 2**31 - 1)),
                     encoded=draw(st.booleans()))
    if draw(st.booleans()):
        datum.data = draw(st.binary(max_size=96))
    else:
        datum.float_data.extend(draw(st.lists(st.floats(width=32), max_size=32)))
    return datum.SerializeToString()


@st.composite
def hostile_caffemodel(draw) -> bytes:
    net = pb.NetParameter(name="fuzz")
    for _ in range(draw(st.integers(0, 3))):
        layer = net.layer.add(name=draw(st.sampled_from(["conv", "ip", "pool", "x"])),
                              type=draw(st.sampled_from(["Convolution", "InnerProduct", ""])))
        for _ in range(draw(st.integers(0, 3))):
            layer.blobs.add().CopyFrom(draw(hostile_blob()))
    return net.SerializeToString()


def inputs(target: Target):
    """Hypothesis strategy of inputs for ``target``."""
    options = [mutated(target.seeds, target.text), st.binary(max_size=512)]
    if target.structured is not None:
        options.append(target.structured)
    if target.text:
        options.append(st.text(max_size=256).map(lambda s: s.encode("utf-8")))
    return st.one_of(*options)
