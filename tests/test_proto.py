"""Tests of the protobuf schema (proto/netforge.proto) and its generated module.

* staleness: the checked-in netforge/netforge_pb2.py equals a fresh protoc run;
* wire compatibility: hand-encoded Caffe bytes (built here without our schema)
  decode to the expected values;
* text format: Caffe-style net and solver prototxt parse, and defaults equal Caffe's.
"""

from __future__ import annotations

import importlib
import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

REPO_ROOT = Path(__file__).resolve().parent.parent
PB2_PATH = REPO_ROOT / "netforge" / "netforge_pb2.py"


def _load_pb2():
    """Import netforge.netforge_pb2; fall back to loading the file directly.

    The fallback keeps these tests independent of the rest of the package (an
    unrelated, half-written module imported by netforge/__init__.py).
    """
    try:
        return importlib.import_module("netforge.netforge_pb2")
    except ImportError:
        if "netforge.netforge_pb2" in sys.modules:
            return sys.modules["netforge.netforge_pb2"]
        spec = importlib.util.spec_from_file_location("netforge.netforge_pb2", PB2_PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["netforge.netforge_pb2"] = module
        return module


pb = _load_pb2()


# ---------------------------------------------------------------------------
# Hand-rolled protobuf wire encoder (independent of the schema under test)
# ---------------------------------------------------------------------------
VARINT, I64, LEN, I32 = 0, 1, 2, 5


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 are sign-extended to 10 bytes
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def f_varint(field: int, value: int) -> bytes:
    return tag(field, VARINT) + varint(value)


def f_bytes(field: int, payload: bytes) -> bytes:
    return tag(field, LEN) + varint(len(payload)) + payload


def f_str(field: int, text: str) -> bytes:
    return f_bytes(field, text.encode())


def f_float(field: int, value: float) -> bytes:
    return tag(field, I32) + struct.pack("<f", value)


def packed_floats(field: int, values) -> bytes:
    return f_bytes(field, b"".join(struct.pack("<f", v) for v in values))


def packed_doubles(field: int, values) -> bytes:
    return f_bytes(field, b"".join(struct.pack("<d", v) for v in values))


def packed_varints(field: int, values) -> bytes:
    return f_bytes(field, b"".join(varint(v) for v in values))


def f32(x: float) -> float:
    """x rounded to float32, as a float field reads back."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_encoder_helper_known_vectors():
    # Examples from the protobuf encoding documentation.
    assert varint(150) == b"\x96\x01"
    assert f_varint(1, 150) == b"\x08\x96\x01"
    assert f_str(2, "testing") == b"\x12\x07testing"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert tag(100, LEN) == b"\xa2\x06"


# ---------------------------------------------------------------------------
# (a) staleness
# ---------------------------------------------------------------------------
def test_generated_module_is_up_to_date(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (grpcio-tools) is not installed; cannot run protoc")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "regenerate_proto.py"),
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    stale = "netforge_pb2.py is stale: run `python tools/regenerate_proto.py`"
    assert (tmp_path / "netforge_pb2.py").read_bytes() == PB2_PATH.read_bytes(), stale
    pyi = PB2_PATH.with_suffix(".pyi")
    if pyi.exists():
        assert (tmp_path / "netforge_pb2.pyi").read_bytes() == pyi.read_bytes(), stale


def test_generated_classes_live_in_the_package():
    assert pb.Datum.__module__ == "netforge.netforge_pb2"
    assert pb.DESCRIPTOR.package == "netforge"


# ---------------------------------------------------------------------------
# (b) wire compatibility with hand-encoded Caffe bytes
# ---------------------------------------------------------------------------
def test_datum_decodes():
    pixels = bytes(range(6))
    raw = (
        f_varint(1, 1)  # channels
        + f_varint(2, 2)  # height
        + f_varint(3, 3)  # width
        + f_bytes(4, pixels)  # data
        + f_varint(5, 5)  # label
        + f_varint(7, 1)  # encoded
    )
    d = pb.Datum.FromString(raw)
    assert (d.channels, d.height, d.width, d.label) == (1, 2, 3, 5)
    assert d.data == pixels
    assert d.encoded is True
    assert list(d.float_data) == []
    # Field order is by number, so our writer reproduces Caffe's bytes exactly.
    assert d.SerializeToString() == raw


def test_datum_float_data_unpacked_like_caffe():
    # Caffe's float_data is not [packed]; it writes one tag per value.
    raw = f_varint(1, 2) + f_float(6, 0.5) + f_float(6, -2.0) + f_varint(5, 9)
    d = pb.Datum.FromString(raw)
    assert list(d.float_data) == [0.5, -2.0]
    assert d.label == 9
    assert d.SerializeToString() == f_varint(1, 2) + f_varint(5, 9) + f_float(6, 0.5) + f_float(
        6, -2.0
    )
    # Parsers must also accept the packed form.
    assert list(pb.Datum.FromString(packed_floats(6, [1.0, 2.0])).float_data) == [1.0, 2.0]


def test_datum_negative_label():
    d = pb.Datum.FromString(f_varint(5, -1))
    assert d.label == -1


def test_blobproto_legacy_4d_and_packed_data():
    values = [0.25, -1.5, 3.0, 1e-3]
    raw = (
        f_varint(1, 1)  # num
        + f_varint(2, 1)  # channels
        + f_varint(3, 2)  # height
        + f_varint(4, 2)  # width
        + packed_floats(5, values)  # data
    )
    b = pb.BlobProto.FromString(raw)
    assert (b.num, b.channels, b.height, b.width) == (1, 1, 2, 2)
    assert list(b.data) == [f32(v) for v in values]
    assert not b.HasField("shape")
    assert b.SerializeToString() == raw


def test_blobproto_shape_packed_int64_dims():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    raw = (
        packed_floats(5, values)
        + packed_floats(6, [0.5] * 6)
        + f_bytes(7, packed_varints(1, [2, 3]))  # shape { dim: 2 dim: 3 }
    )
    b = pb.BlobProto.FromString(raw)
    assert list(b.shape.dim) == [2, 3]
    assert list(b.data) == values
    assert list(b.diff) == [0.5] * 6
    assert b.SerializeToString() == raw


def test_blobproto_double_data_and_large_dims():
    big = 3_000_000_000  # needs int64
    raw = f_bytes(7, packed_varints(1, [big, 1])) + packed_doubles(8, [1.0 / 3.0])
    b = pb.BlobProto.FromString(raw)
    assert list(b.shape.dim) == [big, 1]
    assert list(b.double_data) == [1.0 / 3.0]
    assert b.SerializeToString() == raw


def test_blobprotovector():
    blob = packed_floats(5, [1.0])
    raw = f_bytes(1, blob) + f_bytes(1, blob)
    v = pb.BlobProtoVector.FromString(raw)
    assert len(v.blobs) == 2 and list(v.blobs[1].data) == [1.0]


def test_netparameter_layer_100_with_blobs():
    weight = f_bytes(7, packed_varints(1, [2, 1, 1, 1])) + packed_floats(5, [0.5, -0.5])
    bias = f_bytes(7, packed_varints(1, [2])) + packed_floats(5, [0.0, 1.0])
    layer = (
        f_str(1, "conv1")
        + f_str(2, "Convolution")
        + f_str(3, "data")
        + f_str(4, "conv1")
        + f_bytes(6, f_float(3, 2.0))  # param { lr_mult: 2 }
        + f_bytes(7, weight)
        + f_bytes(7, bias)
        + f_bytes(106, f_varint(1, 2) + packed_varints(4, [1]))  # convolution_param
    )
    raw = f_str(1, "tiny") + f_bytes(100, layer)
    net = pb.NetParameter.FromString(raw)
    assert net.name == "tiny"
    assert len(net.layer) == 1 and len(net.layers) == 0
    lp = net.layer[0]
    assert (lp.name, lp.type) == ("conv1", "Convolution")
    assert list(lp.bottom) == ["data"] and list(lp.top) == ["conv1"]
    assert lp.param[0].lr_mult == 2.0 and lp.param[0].decay_mult == 1.0
    assert [list(b.shape.dim) for b in lp.blobs] == [[2, 1, 1, 1], [2]]
    assert list(lp.blobs[0].data) == [0.5, -0.5]
    assert lp.convolution_param.num_output == 2
    assert list(lp.convolution_param.kernel_size) == [1]


def test_netparameter_legacy_v1_layers_and_inputs():
    blob = (
        f_varint(1, 1)
        + f_varint(2, 1)
        + f_varint(3, 2)
        + f_varint(4, 3)  # 1x1x2x3 (old IP)
        + packed_floats(5, [1.0] * 6)
    )
    v1 = (
        f_str(2, "data")  # bottom
        + f_str(3, "ip1")  # top
        + f_str(4, "ip1")  # name
        + f_varint(5, 14)  # type: INNER_PRODUCT
        + f_bytes(6, blob)  # blobs
        + f_float(7, 1.0)  # blobs_lr
        + f_float(7, 2.0)
        + f_float(8, 1.0)  # weight_decay
        + f_float(8, 0.0)
        + f_bytes(17, f_varint(1, 2))  # inner_product_param { num_output: 2 }
        + f_str(1001, "shared_w")  # param (share names)
    )
    v1_v0 = f_varint(5, 4) + f_bytes(1, f_str(1, "conv0") + f_str(2, "conv") + f_varint(3, 8))
    raw = (
        f_str(1, "legacy")
        + f_bytes(2, v1)
        + f_bytes(2, v1_v0)
        + f_str(3, "data")  # input
        + f_varint(4, 1)  # input_dim x4 (unpacked, as Caffe writes them)
        + f_varint(4, 1)
        + f_varint(4, 2)
        + f_varint(4, 3)
    )
    net = pb.NetParameter.FromString(raw)
    assert len(net.layer) == 0 and len(net.layers) == 2
    assert list(net.input) == ["data"] and list(net.input_dim) == [1, 1, 2, 3]
    layer = net.layers[0]
    assert layer.name == "ip1"
    assert layer.type == pb.V1LayerParameter.INNER_PRODUCT
    assert pb.V1LayerParameter.LayerType.Name(layer.type) == "INNER_PRODUCT"
    assert list(layer.bottom) == ["data"] and list(layer.top) == ["ip1"]
    assert list(layer.blobs_lr) == [1.0, 2.0] and list(layer.weight_decay) == [1.0, 0.0]
    assert list(layer.param) == ["shared_w"]
    assert layer.inner_product_param.num_output == 2
    b = layer.blobs[0]
    assert (b.num, b.channels, b.height, b.width) == (1, 1, 2, 3)
    assert len(b.data) == 6
    old = net.layers[1]
    assert old.type == pb.V1LayerParameter.CONVOLUTION
    assert (old.layer.name, old.layer.type, old.layer.num_output) == ("conv0", "conv", 8)
    assert old.layer.biasterm is True  # V0 default


def test_netparameter_input_shape():
    shape = f_bytes(8, packed_varints(1, [1, 3, 224, 224]))
    net = pb.NetParameter.FromString(f_str(3, "data") + shape)
    assert [list(s.dim) for s in net.input_shape] == [[1, 3, 224, 224]]


def test_solverstate_decodes():
    history = packed_floats(5, [0.1, 0.2]) + f_bytes(7, packed_varints(1, [2]))
    raw = (
        f_varint(1, 5000)
        + f_str(2, "snap/lenet_iter_5000.caffemodel")
        + f_bytes(3, history)
        + f_bytes(3, history)
        + f_varint(4, 2)
    )
    s = pb.SolverState.FromString(raw)
    assert s.iter == 5000
    assert s.learned_net == "snap/lenet_iter_5000.caffemodel"
    assert len(s.history) == 2 and list(s.history[0].data) == [f32(0.1), f32(0.2)]
    assert s.current_step == 2
    assert s.SerializeToString() == raw


def test_solver_negative_int64_and_enums_on_the_wire():
    raw = (
        f_varint(3, 100)  # test_iter
        + f_varint(3, 50)
        + f_float(5, 0.01)  # base_lr
        + f_varint(17, 0)  # solver_mode CPU
        + f_varint(20, -1)  # random_seed
        + f_varint(30, 5)  # solver_type ADAM
        + f_varint(37, 0)  # snapshot_format HDF5
        + f_str(40, "Adam")
        + f_str(42, "a.caffemodel")
    )
    s = pb.SolverParameter.FromString(raw)
    assert list(s.test_iter) == [100, 50]
    assert s.base_lr == f32(0.01)
    assert s.solver_mode == pb.SolverParameter.CPU
    assert s.random_seed == -1
    assert s.solver_type == pb.SolverParameter.ADAM
    assert s.snapshot_format == pb.SolverParameter.HDF5
    assert s.type == "Adam"
    assert list(s.weights) == ["a.caffemodel"]


def test_layer_repeated_scalars_are_unpacked_like_caffe():
    # loss_weight and propagate_down are plain repeated fields in Caffe.
    lp = pb.LayerParameter(loss_weight=[1.0, 0.5], propagate_down=[True, False])
    expected = f_float(5, 1.0) + f_float(5, 0.5) + f_varint(11, 1) + f_varint(11, 0)
    assert lp.SerializeToString() == expected


# ---------------------------------------------------------------------------
# Schema table: field numbers / types / labels that Caffe files depend on
# ---------------------------------------------------------------------------
LAYER_PARAM_NUMBERS = {
    "name": 1, "type": 2, "bottom": 3, "top": 4, "loss_weight": 5, "param": 6, "blobs": 7,
    "include": 8, "exclude": 9, "phase": 10, "propagate_down": 11,
    "transform_param": 100, "loss_param": 101, "accuracy_param": 102, "argmax_param": 103,
    "concat_param": 104, "contrastive_loss_param": 105, "convolution_param": 106,
    "data_param": 107, "dropout_param": 108, "dummy_data_param": 109, "eltwise_param": 110,
    "exp_param": 111, "hdf5_data_param": 112, "hdf5_output_param": 113,
    "hinge_loss_param": 114, "image_data_param": 115, "infogain_loss_param": 116,
    "inner_product_param": 117, "lrn_param": 118, "memory_data_param": 119, "mvn_param": 120,
    "pooling_param": 121, "power_param": 122, "relu_param": 123, "sigmoid_param": 124,
    "softmax_param": 125, "slice_param": 126, "tanh_param": 127, "threshold_param": 128,
    "window_data_param": 129, "python_param": 130, "prelu_param": 131, "spp_param": 132,
    "reshape_param": 133, "log_param": 134, "flatten_param": 135, "reduction_param": 136,
    "embed_param": 137, "tile_param": 138, "batch_norm_param": 139, "elu_param": 140,
    "bias_param": 141, "scale_param": 142, "input_param": 143, "crop_param": 144,
    "parameter_param": 145, "recurrent_param": 146, "swish_param": 147, "clip_param": 148,
}  # fmt: skip

SOLVER_NUMBERS = {
    "train_net": 1, "test_net": 2, "test_iter": 3, "test_interval": 4, "base_lr": 5,
    "display": 6, "max_iter": 7, "lr_policy": 8, "gamma": 9, "power": 10, "momentum": 11,
    "weight_decay": 12, "stepsize": 13, "snapshot": 14, "snapshot_prefix": 15,
    "snapshot_diff": 16, "solver_mode": 17, "device_id": 18, "test_compute_loss": 19,
    "random_seed": 20, "train_net_param": 21, "test_net_param": 22, "debug_info": 23,
    "net": 24, "net_param": 25, "train_state": 26, "test_state": 27,
    "snapshot_after_train": 28, "regularization_type": 29, "solver_type": 30, "delta": 31,
    "test_initialization": 32, "average_loss": 33, "stepvalue": 34, "clip_gradients": 35,
    "iter_size": 36, "snapshot_format": 37, "rms_decay": 38, "momentum2": 39, "type": 40,
    "layer_wise_reduce": 41, "weights": 42,
}  # fmt: skip


@pytest.mark.parametrize(
    ("message", "numbers"),
    [("LayerParameter", LAYER_PARAM_NUMBERS), ("SolverParameter", SOLVER_NUMBERS)],
)
def test_caffe_field_numbers(message, numbers):
    desc = getattr(pb, message).DESCRIPTOR
    caffe_fields = {f.name: f.number for f in desc.fields if f.number < 10000}
    assert caffe_fields == numbers


F = pb.BlobShape.DESCRIPTOR.fields_by_name["dim"]  # for the TYPE_* constants
# (message, field, number, type, repeated, packed)
FIELD_TABLE = [
    ("BlobShape", "dim", 1, F.TYPE_INT64, True, True),
    ("BlobProto", "shape", 7, F.TYPE_MESSAGE, False, False),
    ("BlobProto", "data", 5, F.TYPE_FLOAT, True, True),
    ("BlobProto", "diff", 6, F.TYPE_FLOAT, True, True),
    ("BlobProto", "double_data", 8, F.TYPE_DOUBLE, True, True),
    ("BlobProto", "double_diff", 9, F.TYPE_DOUBLE, True, True),
    ("BlobProto", "num", 1, F.TYPE_INT32, False, False),
    ("BlobProto", "width", 4, F.TYPE_INT32, False, False),
    ("BlobProtoVector", "blobs", 1, F.TYPE_MESSAGE, True, False),
    ("Datum", "channels", 1, F.TYPE_INT32, False, False),
    ("Datum", "data", 4, F.TYPE_BYTES, False, False),
    ("Datum", "label", 5, F.TYPE_INT32, False, False),
    ("Datum", "float_data", 6, F.TYPE_FLOAT, True, False),
    ("Datum", "encoded", 7, F.TYPE_BOOL, False, False),
    ("NetParameter", "input", 3, F.TYPE_STRING, True, False),
    ("NetParameter", "input_shape", 8, F.TYPE_MESSAGE, True, False),
    ("NetParameter", "input_dim", 4, F.TYPE_INT32, True, False),
    ("NetParameter", "force_backward", 5, F.TYPE_BOOL, False, False),
    ("NetParameter", "state", 6, F.TYPE_MESSAGE, False, False),
    ("NetParameter", "debug_info", 7, F.TYPE_BOOL, False, False),
    ("NetParameter", "layer", 100, F.TYPE_MESSAGE, True, False),
    ("NetParameter", "layers", 2, F.TYPE_MESSAGE, True, False),
    ("SolverParameter", "random_seed", 20, F.TYPE_INT64, False, False),
    ("SolverParameter", "test_iter", 3, F.TYPE_INT32, True, False),
    ("SolverParameter", "stepvalue", 34, F.TYPE_INT32, True, False),
    ("SolverState", "iter", 1, F.TYPE_INT32, False, False),
    ("SolverState", "history", 3, F.TYPE_MESSAGE, True, False),
    ("SolverState", "current_step", 4, F.TYPE_INT32, False, False),
    ("NetState", "phase", 1, F.TYPE_ENUM, False, False),
    ("NetState", "level", 2, F.TYPE_INT32, False, False),
    ("NetState", "stage", 3, F.TYPE_STRING, True, False),
    ("NetStateRule", "not_stage", 5, F.TYPE_STRING, True, False),
    ("ParamSpec", "share_mode", 2, F.TYPE_ENUM, False, False),
    ("ParamSpec", "decay_mult", 4, F.TYPE_FLOAT, False, False),
    ("LayerParameter", "loss_weight", 5, F.TYPE_FLOAT, True, False),
    ("LayerParameter", "propagate_down", 11, F.TYPE_BOOL, True, False),
    ("ConvolutionParameter", "kernel_size", 4, F.TYPE_UINT32, True, False),
    ("ConvolutionParameter", "dilation", 18, F.TYPE_UINT32, True, False),
    ("ConvolutionParameter", "axis", 16, F.TYPE_INT32, False, False),
    ("PoolingParameter", "round_mode", 13, F.TYPE_ENUM, False, False),
    ("PoolingParameter", "ceil_mode", 10001, F.TYPE_BOOL, False, False),
    ("FillerParameter", "sparse", 7, F.TYPE_INT32, False, False),
    ("FillerParameter", "variance_norm", 8, F.TYPE_ENUM, False, False),
    ("TransformationParameter", "mean_value", 5, F.TYPE_FLOAT, True, False),
    ("TransformationParameter", "crop_size", 3, F.TYPE_UINT32, False, False),
    ("V1LayerParameter", "type", 5, F.TYPE_ENUM, False, False),
    ("V1LayerParameter", "blobs", 6, F.TYPE_MESSAGE, True, False),
    ("V1LayerParameter", "param", 1001, F.TYPE_STRING, True, False),
    ("V1LayerParameter", "blob_share_mode", 1002, F.TYPE_ENUM, True, False),
    ("V1LayerParameter", "layer", 1, F.TYPE_MESSAGE, False, False),
    ("V1LayerParameter", "transform_param", 36, F.TYPE_MESSAGE, False, False),
    ("V1LayerParameter", "loss_param", 42, F.TYPE_MESSAGE, False, False),
    ("V0LayerParameter", "blobs", 50, F.TYPE_MESSAGE, True, False),
    ("V0LayerParameter", "hdf5_output_param", 1001, F.TYPE_MESSAGE, False, False),
]


@pytest.mark.parametrize(("message", "field", "number", "ftype", "repeated", "packed"), FIELD_TABLE)
def test_field_table(message, field, number, ftype, repeated, packed):
    fd = getattr(pb, message).DESCRIPTOR.fields_by_name[field]
    assert fd.number == number
    assert fd.type == ftype
    assert fd.is_repeated == repeated
    assert fd.is_packed == packed


def test_clip_parameter_fields_are_required():
    desc = pb.ClipParameter.DESCRIPTOR
    assert all(f.is_required for f in desc.fields)
    assert [f.number for f in desc.fields] == [1, 2]


V1_LAYER_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3,
    "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39,
    "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38,
    "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28,
    "IM2COL": 11, "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14,
    "LRN": 15, "MEMORY_DATA": 29, "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34,
    "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19,
    "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20,
    "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24,
    "THRESHOLD": 31,
}  # fmt: skip


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (pb.Phase, {"TRAIN": 0, "TEST": 1}),
        (pb.SolverParameter.SnapshotFormat, {"HDF5": 0, "BINARYPROTO": 1}),
        (pb.SolverParameter.SolverMode, {"CPU": 0, "GPU": 1}),
        (
            pb.SolverParameter.SolverType,
            {"SGD": 0, "NESTEROV": 1, "ADAGRAD": 2, "RMSPROP": 3, "ADADELTA": 4, "ADAM": 5},
        ),
        (pb.FillerParameter.VarianceNorm, {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2}),
        (pb.ParamSpec.DimCheckMode, {"STRICT": 0, "PERMISSIVE": 1}),
        (
            pb.LossParameter.NormalizationMode,
            {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3},
        ),
        (pb.PoolingParameter.PoolMethod, {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
        (pb.PoolingParameter.RoundMode, {"CEIL": 0, "FLOOR": 1}),
        (pb.ConvolutionParameter.Engine, {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}),
        (pb.DataParameter.DB, {"LEVELDB": 0, "LMDB": 1}),
        (pb.EltwiseParameter.EltwiseOp, {"PROD": 0, "SUM": 1, "MAX": 2}),
        (pb.HingeLossParameter.Norm, {"L1": 1, "L2": 2}),
        (pb.LRNParameter.NormRegion, {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}),
        (pb.ReductionParameter.ReductionOp, {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4}),
        (pb.V1LayerParameter.LayerType, V1_LAYER_TYPES),
    ],
    ids=lambda v: getattr(getattr(v, "DESCRIPTOR", None), "full_name", None),
)
def test_enum_values(enum, values):
    assert dict(enum.items()) == values


# ---------------------------------------------------------------------------
# (c) text format
# ---------------------------------------------------------------------------
LENET_SNIPPET = """
name: "LeNet"
layer {
  name: "mnist"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TRAIN
  }
  transform_param {
    scale: 0.00390625
  }
  data_param {
    source: "examples/mnist/mnist_train_lmdb"
    batch_size: 64
    backend: LMDB
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "ip2"
  bottom: "label"
  top: "accuracy"
  include {
    phase: TEST
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
  loss_weight: 1
}
"""


def test_lenet_prototxt_parses():
    net = text_format.Parse(LENET_SNIPPET, pb.NetParameter())
    assert net.name == "LeNet"
    assert [lp.name for lp in net.layer] == ["mnist", "conv1", "pool1", "accuracy", "loss"]
    data, conv, pool, acc, loss = net.layer
    assert list(data.top) == ["data", "label"]
    assert data.include[0].phase == pb.TRAIN
    assert data.include[0].HasField("phase")
    assert data.transform_param.scale == 0.00390625
    assert data.data_param.source == "examples/mnist/mnist_train_lmdb"
    assert data.data_param.batch_size == 64
    assert data.data_param.backend == pb.DataParameter.LMDB
    assert [p.lr_mult for p in conv.param] == [1.0, 2.0]
    cp = conv.convolution_param
    assert cp.num_output == 20
    assert list(cp.kernel_size) == [5] and list(cp.stride) == [1]
    assert cp.weight_filler.type == "xavier"
    assert cp.bias_filler.type == "constant"
    assert cp.bias_term is True
    assert pool.pooling_param.pool == pb.PoolingParameter.MAX
    assert pool.pooling_param.kernel_size == 2 and pool.pooling_param.stride == 2
    assert acc.include[0].phase == pb.TEST
    assert list(loss.loss_weight) == [1.0]
    # Round trip through both formats.
    again = pb.NetParameter.FromString(net.SerializeToString())
    assert text_format.Parse(text_format.MessageToString(again), pb.NetParameter()) == net


SOLVER_SNIPPET = """
# The train/test net protocol buffer definition
net: "examples/mnist/lenet_train_test.prototxt"
test_iter: 100
test_interval: 500
base_lr: 0.01
momentum: 0.9
momentum2: 0.999
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "examples/mnist/lenet"
solver_mode: CPU
type: "Adam"
stepvalue: 1000
stepvalue: 2000
stepvalue: 3000
solver_type: NESTEROV
delta: 1e-6
random_seed: 1701
"""


def test_solver_prototxt_parses():
    s = text_format.Parse(SOLVER_SNIPPET, pb.SolverParameter())
    assert s.net == "examples/mnist/lenet_train_test.prototxt"
    assert list(s.test_iter) == [100]
    assert s.test_interval == 500
    assert s.base_lr == f32(0.01)
    assert s.momentum == f32(0.9)
    assert s.momentum2 == f32(0.999)
    assert s.weight_decay == f32(0.0005)
    assert s.lr_policy == "inv"
    assert s.gamma == f32(0.0001)
    assert s.power == 0.75
    assert s.display == 100
    assert s.max_iter == 10000
    assert s.snapshot == 5000
    assert s.snapshot_prefix == "examples/mnist/lenet"
    assert s.solver_mode == pb.SolverParameter.CPU
    assert s.type == "Adam"
    assert list(s.stepvalue) == [1000, 2000, 3000]
    assert s.solver_type == pb.SolverParameter.NESTEROV
    assert s.delta == f32(1e-6)
    assert s.random_seed == 1701
    assert not s.HasField("snapshot_format")


def test_legacy_text_net_parses():
    text = """
    name: "old"
    input: "data"
    input_dim: 10 input_dim: 3 input_dim: 227 input_dim: 227
    layers {
      name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
      blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
      convolution_param { num_output: 96 kernel_size: 11 stride: 4 }
    }
    layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
    """
    net = text_format.Parse(text, pb.NetParameter())
    assert list(net.input_dim) == [10, 3, 227, 227]
    assert [v1.type for v1 in net.layers] == [
        pb.V1LayerParameter.CONVOLUTION,
        pb.V1LayerParameter.RELU,
    ]
    assert list(net.layers[0].blobs_lr) == [1.0, 2.0]


def test_pooling_ceil_mode_alias_parses():
    text = 'layer { name: "p" type: "Pooling" pooling_param { pool: AVE ceil_mode: false } }'
    pp = text_format.Parse(text, pb.NetParameter()).layer[0].pooling_param
    assert pp.HasField("ceil_mode") and pp.ceil_mode is False
    assert not pp.HasField("round_mode") and pp.round_mode == pb.PoolingParameter.CEIL
    assert pb.PoolingParameter.DESCRIPTOR.fields_by_name["ceil_mode"].number >= 10000
    assert text_format.Parse("round_mode: FLOOR", pb.PoolingParameter()).round_mode == 1


def test_input_layer_and_netstate_text():
    text = """
    state { phase: TRAIN level: 2 stage: "deploy" }
    layer { name: "input" type: "Input" top: "data"
            input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data"
            exclude { min_level: 1 not_stage: "x" } propagate_down: false }
    """
    net = text_format.Parse(text, pb.NetParameter())
    assert (net.state.phase, net.state.level, list(net.state.stage)) == (pb.TRAIN, 2, ["deploy"])
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 32, 32]
    rule = net.layer[1].exclude[0]
    assert rule.min_level == 1 and list(rule.not_stage) == ["x"]
    assert not rule.HasField("phase")
    assert list(net.layer[1].propagate_down) == [False]


# (message, field, Caffe default)
DEFAULTS = [
    ("SolverParameter", "average_loss", 1),
    ("SolverParameter", "iter_size", 1),
    ("SolverParameter", "clip_gradients", -1.0),
    ("SolverParameter", "snapshot_format", pb.SolverParameter.BINARYPROTO),
    ("SolverParameter", "solver_mode", pb.SolverParameter.GPU),
    ("SolverParameter", "random_seed", -1),
    ("SolverParameter", "type", "SGD"),
    ("SolverParameter", "delta", f32(1e-8)),
    ("SolverParameter", "momentum2", f32(0.999)),
    ("SolverParameter", "rms_decay", f32(0.99)),
    ("SolverParameter", "test_initialization", True),
    ("SolverParameter", "snapshot_after_train", True),
    ("SolverParameter", "regularization_type", "L2"),
    ("SolverParameter", "solver_type", pb.SolverParameter.SGD),
    ("SolverParameter", "layer_wise_reduce", True),
    ("SolverParameter", "test_interval", 0),
    ("SolverParameter", "snapshot", 0),
    ("SolverParameter", "device_id", 0),
    ("SolverParameter", "base_lr", 0.0),
    ("SolverParameter", "lr_policy", ""),
    ("SolverParameter", "test_compute_loss", False),
    ("SolverParameter", "debug_info", False),
    ("SolverParameter", "snapshot_diff", False),
    ("SolverState", "current_step", 0),
    ("SolverState", "iter", 0),
    ("PoolingParameter", "stride", 1),
    ("PoolingParameter", "pool", pb.PoolingParameter.MAX),
    ("PoolingParameter", "round_mode", pb.PoolingParameter.CEIL),
    ("PoolingParameter", "pad", 0),
    ("PoolingParameter", "global_pooling", False),
    ("PoolingParameter", "engine", pb.PoolingParameter.DEFAULT),
    ("ConvolutionParameter", "bias_term", True),
    ("ConvolutionParameter", "group", 1),
    ("ConvolutionParameter", "axis", 1),
    ("ConvolutionParameter", "pad_h", 0),
    ("ConvolutionParameter", "force_nd_im2col", False),
    ("FillerParameter", "type", "constant"),
    ("FillerParameter", "value", 0.0),
    ("FillerParameter", "min", 0.0),
    ("FillerParameter", "max", 1.0),
    ("FillerParameter", "mean", 0.0),
    ("FillerParameter", "std", 1.0),
    ("FillerParameter", "sparse", -1),
    ("FillerParameter", "variance_norm", pb.FillerParameter.FAN_IN),
    ("DataParameter", "backend", pb.DataParameter.LEVELDB),
    ("DataParameter", "prefetch", 4),
    ("DataParameter", "scale", 1.0),
    ("DataParameter", "rand_skip", 0),
    ("LRNParameter", "local_size", 5),
    ("LRNParameter", "alpha", 1.0),
    ("LRNParameter", "beta", 0.75),
    ("LRNParameter", "k", 1.0),
    ("LRNParameter", "norm_region", pb.LRNParameter.ACROSS_CHANNELS),
    ("BatchNormParameter", "moving_average_fraction", f32(0.999)),
    ("BatchNormParameter", "eps", f32(1e-5)),
    ("BatchNormParameter", "use_global_stats", False),
    ("TransformationParameter", "scale", 1.0),
    ("TransformationParameter", "mirror", False),
    ("TransformationParameter", "crop_size", 0),
    ("ParamSpec", "lr_mult", 1.0),
    ("ParamSpec", "decay_mult", 1.0),
    ("ParamSpec", "share_mode", pb.ParamSpec.STRICT),
    ("NetState", "phase", pb.TEST),
    ("NetState", "level", 0),
    ("NetParameter", "force_backward", False),
    ("LossParameter", "normalization", pb.LossParameter.VALID),
    ("DropoutParameter", "dropout_ratio", 0.5),
    ("InnerProductParameter", "bias_term", True),
    ("InnerProductParameter", "axis", 1),
    ("InnerProductParameter", "transpose", False),
    ("SoftmaxParameter", "axis", 1),
    ("ConcatParameter", "axis", 1),
    ("ConcatParameter", "concat_dim", 1),
    ("EltwiseParameter", "operation", pb.EltwiseParameter.SUM),
    ("EltwiseParameter", "stable_prod_grad", True),
    ("ReshapeParameter", "axis", 0),
    ("ReshapeParameter", "num_axes", -1),
    ("FlattenParameter", "axis", 1),
    ("FlattenParameter", "end_axis", -1),
    ("AccuracyParameter", "top_k", 1),
    ("AccuracyParameter", "axis", 1),
    ("ArgMaxParameter", "top_k", 1),
    ("ArgMaxParameter", "out_max_val", False),
    ("SliceParameter", "axis", 1),
    ("SliceParameter", "slice_dim", 1),
    ("ScaleParameter", "axis", 1),
    ("ScaleParameter", "num_axes", 1),
    ("ScaleParameter", "bias_term", False),
    ("BiasParameter", "axis", 1),
    ("BiasParameter", "num_axes", 1),
    ("MVNParameter", "normalize_variance", True),
    ("MVNParameter", "across_channels", False),
    ("MVNParameter", "eps", f32(1e-9)),
    ("ELUParameter", "alpha", 1.0),
    ("SwishParameter", "beta", 1.0),
    ("ReLUParameter", "negative_slope", 0.0),
    ("PowerParameter", "power", 1.0),
    ("PowerParameter", "scale", 1.0),
    ("PowerParameter", "shift", 0.0),
    ("ExpParameter", "base", -1.0),
    ("ExpParameter", "scale", 1.0),
    ("ExpParameter", "shift", 0.0),
    ("LogParameter", "base", -1.0),
    ("LogParameter", "scale", 1.0),
    ("ThresholdParameter", "threshold", 0.0),
    ("HingeLossParameter", "norm", pb.HingeLossParameter.L1),
    ("ContrastiveLossParameter", "margin", 1.0),
    ("ContrastiveLossParameter", "legacy_version", False),
    ("ImageDataParameter", "batch_size", 1),
    ("ImageDataParameter", "is_color", True),
    ("ImageDataParameter", "shuffle", False),
    ("ImageDataParameter", "root_folder", ""),
    ("InfogainLossParameter", "axis", 1),
    ("CropParameter", "axis", 2),
    ("ReductionParameter", "operation", pb.ReductionParameter.SUM),
    ("ReductionParameter", "axis", 0),
    ("ReductionParameter", "coeff", 1.0),
    ("TileParameter", "axis", 1),
    ("EmbedParameter", "bias_term", True),
    ("HDF5DataParameter", "shuffle", False),
    ("PythonParameter", "param_str", ""),
    ("PythonParameter", "share_in_parallel", False),
    ("RecurrentParameter", "num_output", 0),
    ("RecurrentParameter", "expose_hidden", False),
    ("PReLUParameter", "channel_shared", False),
    ("SPPParameter", "pool", pb.SPPParameter.MAX),
    ("WindowDataParameter", "fg_threshold", 0.5),
    ("WindowDataParameter", "bg_threshold", 0.5),
    ("WindowDataParameter", "fg_fraction", 0.25),
    ("WindowDataParameter", "crop_mode", "warp"),
    ("Datum", "encoded", False),
    ("BlobProto", "num", 0),
    ("V0LayerParameter", "biasterm", True),
    ("V0LayerParameter", "stride", 1),
    ("V0LayerParameter", "det_crop_mode", "warp"),
    ("V0LayerParameter", "concat_dim", 1),
]


@pytest.mark.parametrize(("message", "field", "expected"), DEFAULTS)
def test_caffe_defaults(message, field, expected):
    msg = getattr(pb, message)()
    value = getattr(msg, field)
    if isinstance(expected, bool):
        assert value is expected
    else:
        assert value == expected
    assert not msg.HasField(field)


def test_every_netforge_extension_is_numbered_from_10000():
    # Caffe uses numbers < 10000 only (max 1002); anything of ours must be >= 10000.
    extensions = {}
    for name in pb.DESCRIPTOR.message_types_by_name:
        for fd in getattr(pb, name).DESCRIPTOR.fields:
            if fd.number >= 10000:
                extensions[fd.full_name] = fd.number
    assert extensions.get("netforge.PoolingParameter.ceil_mode") == 10001
