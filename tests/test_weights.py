"""Weights interoperability: Caffe .caffemodel (modern and V1), legacy 4-D blobs, HDF5."""

import numpy as np
import pytest

from netforge import config, weights
from netforge import netforge_pb2 as pb
from netforge.errors import ShapeError
from netforge.net import Net

V1 = pb.V1LayerParameter
NET = """
name: "small"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 2 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: {conv_out} kernel_size: 3
          weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
        inner_product_param {{ num_output: 5
          weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" }} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "ip" top: "prob" }}
"""


def _net(seed: int, conv_out: int = 4) -> Net:
    return Net(config.parse_text(NET.format(conv_out=conv_out), pb.NetParameter()), "test",
               seed=seed)


def _input() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)


def _legacy_blob(values: np.ndarray, dims4) -> pb.BlobProto:
    """A BlobProto as old Caffe wrote it: num/channels/height/width, no ``shape``."""
    blob = pb.BlobProto(num=dims4[0], channels=dims4[1], height=dims4[2], width=dims4[3])
    blob.data.extend(values.ravel().tolist())
    return blob


def _v1_caffemodel(net: Net) -> pb.NetParameter:
    """The net's weights in the V1 `layers` form old Caffe releases saved."""
    model = pb.NetParameter(name="small")
    data = model.layers.add(name="data", type=V1.DATA)  # the target net has no such layer
    data.top.extend(["data", "label"])
    data.data_param.source = "train_lmdb"
    conv_w, conv_b = (p.data for p in net.params["conv1"])
    conv = model.layers.add(name="conv1", type=V1.CONVOLUTION, bottom=["data"], top=["conv1"])
    conv.blobs_lr.extend([1, 2])
    conv.weight_decay.extend([1, 0])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    conv.blobs.append(_legacy_blob(conv_w, conv_w.shape))
    conv.blobs.append(_legacy_blob(conv_b, (1, 1, 1, conv_b.size)))
    model.layers.add(name="relu1", type=V1.RELU, bottom=["conv1"], top=["conv1"])
    pool = model.layers.add(name="pool1", type=V1.POOLING, bottom=["conv1"], top=["pool1"])
    pool.pooling_param.kernel_size = 2
    ip_w, ip_b = (p.data for p in net.params["ip"])
    ip = model.layers.add(name="ip", type=V1.INNER_PRODUCT, bottom=["pool1"], top=["ip"])
    ip.inner_product_param.num_output = 5
    ip.blobs.append(_legacy_blob(ip_w, (1, 1, *ip_w.shape)))
    ip.blobs.append(_legacy_blob(ip_b, (1, 1, 1, ip_b.size)))
    model.layers.add(name="prob", type=V1.SOFTMAX, bottom=["ip"], top=["prob"])
    return model


def test_v1_and_modern_caffemodels_give_identical_outputs(tmp_path):
    source = _net(seed=1)
    expected = source.forward(data=_input())["prob"].copy()
    modern, old = tmp_path / "modern.caffemodel", tmp_path / "v1.caffemodel"
    source.save(modern)
    old.write_bytes(_v1_caffemodel(source).SerializeToString())

    from_modern, from_v1 = _net(seed=2), _net(seed=3)
    before = from_v1.forward(data=_input())["prob"].copy()
    assert not np.allclose(before, expected)  # fresh weights differ before loading
    from_modern.copy_from(modern)
    from_v1.copy_from(old)
    out_modern = from_modern.forward(data=_input())["prob"]
    out_v1 = from_v1.forward(data=_input())["prob"]
    np.testing.assert_array_equal(out_v1, out_modern)
    np.testing.assert_array_equal(out_modern, expected)


def test_reading_a_v1_caffemodel_upgrades_its_layers(tmp_path):
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(_v1_caffemodel(_net(seed=1)).SerializeToString())
    model = weights.read_caffemodel(path)
    assert not model.layers
    assert [(layer.name, layer.type) for layer in model.layer] == [
        ("data", "Data"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"),
        ("ip", "InnerProduct"), ("prob", "Softmax")]
    conv = model.layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.blobs[1].width == 4


SHAPE_CASES = [
    # (target shape, legacy dims or None for a modern shape, file shape, matches)
    ((5, 7), True, (1, 1, 5, 7), True),  # old InnerProduct weight
    ((5,), True, (1, 1, 1, 5), True),  # old bias
    ((4, 3, 3, 3), True, (4, 3, 3, 3), True),
    ((5, 7), True, (1, 1, 7, 5), False),  # same count, axes differ
    ((5, 7), True, (1, 5, 7, 1), False),  # same squeezed shape, but legacy axes end-aligned
    ((1, 2, 3, 4, 5), True, (2, 3, 4, 5), False),  # more than four axes never match
    ((5, 7), False, (5, 7), True),
    ((5, 7), False, (1, 1, 5, 7), False),  # modern shapes must match exactly
]


@pytest.mark.parametrize("target, is_legacy, dims, matches", SHAPE_CASES)
def test_blob_shape_matching_follows_caffe(target, is_legacy, dims, matches):
    if is_legacy:
        proto = pb.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
    else:
        proto = pb.BlobProto()
        proto.shape.dim.extend(dims)
    assert weights.blob_shape_matches(target, proto) is matches


def test_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    path = tmp_path / "w.caffemodel"
    _net(seed=1).save(path)
    wider = _net(seed=2, conv_out=6)
    with pytest.raises(ShapeError) as err:
        wider.copy_from(path)
    message = str(err.value)
    assert 'layer "conv1"' in message
    assert "(4, 3, 3, 3)" in message and "(6, 3, 3, 3)" in message


def test_legacy_blob_mismatch_is_reported_with_its_legacy_dims(tmp_path):
    model = _v1_caffemodel(_net(seed=1))
    ip = model.layers[4]
    ip.blobs[0].height, ip.blobs[0].width = ip.blobs[0].width, ip.blobs[0].height
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ShapeError, match=r'layer "ip".*\(1, 1, 36, 5\) \(legacy'):
        _net(seed=2).copy_from(path)


def test_blob_count_mismatch_is_an_error(tmp_path):
    model = pb.NetParameter()
    layer = model.layer.add(name="conv1", type="Convolution")
    layer.blobs.add().shape.dim.extend([4, 3, 3, 3])
    layer.blobs[0].data.extend([0.0] * 108)
    path = tmp_path / "w.caffemodel"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ShapeError, match='layer "conv1" has 1 param blob.*but 2 in the net'):
        _net(seed=1).copy_from(path)


def test_source_layers_missing_from_the_net_are_ignored_and_others_keep_their_init(tmp_path):
    source = _net(seed=1)
    model = source.to_proto()
    extra = model.layer.add(name="fc_extra", type="InnerProduct")
    extra.blobs.add().shape.dim.extend([2])
    extra.blobs[0].data.extend([1.0, 2.0])
    model.ClearField("layer")
    kept = [layer for layer in source.to_proto().layer if layer.name != "ip"] + [extra]
    model.layer.extend(kept)
    path = tmp_path / "w.caffemodel"
    path.write_bytes(model.SerializeToString())
    target = _net(seed=2)
    ip_before = target.params["ip"][0].data.copy()
    target.copy_from(path)
    np.testing.assert_array_equal(target.params["conv1"][0].data, source.params["conv1"][0].data)
    np.testing.assert_array_equal(target.params["ip"][0].data, ip_before)


def test_hdf5_round_trip(tmp_path):
    source = _net(seed=1)
    expected = source.forward(data=_input())["prob"].copy()
    path = tmp_path / "w.caffemodel.h5"
    source.save_hdf5(path)
    import h5py

    with h5py.File(path, "r") as handle:
        assert sorted(handle["data"]) == ["conv1", "ip"]
        assert handle["data/conv1/0"].shape == (4, 3, 3, 3)
        assert handle["data/ip/1"].shape == (5,)
    target = _net(seed=2)
    target.copy_from(path)
    np.testing.assert_array_equal(target.forward(data=_input())["prob"], expected)


def test_hdf5_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    path = tmp_path / "w.caffemodel.h5"
    _net(seed=1).save_hdf5(path)
    with pytest.raises(ShapeError, match=r'layer "conv1".*\(4, 3, 3, 3\).*\(6, 3, 3, 3\)'):
        _net(seed=2, conv_out=6).copy_from(path)


SHARED = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
        inner_product_param { num_output: 3 bias_term: false
                              weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
        inner_product_param { num_output: 3 bias_term: false
                              weight_filler { type: "gaussian" } } }
"""


def test_hdf5_skips_shared_params_and_loads_them_through_the_owner(tmp_path):
    source = Net(config.parse_text(SHARED, pb.NetParameter()), "test", seed=1)
    path = tmp_path / "w.caffemodel.h5"
    source.save_hdf5(path)
    import h5py

    with h5py.File(path, "r") as handle:
        assert list(handle["data"]) == ["a"]  # "b" only borrows the owner's blob
    target = Net(config.parse_text(SHARED, pb.NetParameter()), "test", seed=2)
    target.copy_from(path)
    np.testing.assert_array_equal(target.params["b"][0].data, source.params["a"][0].data)
