"""Legacy net upgrades (V0 → V1 → modern), each rule checked on a hand-written old net."""

import numpy as np
import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.config import legacy
from netforge.errors import ConfigError
from netforge.net import Net


def _parse(text: str) -> pb.NetParameter:
    return config.parse_text(text, pb.NetParameter(), "old.prototxt")


V1_NET = """
name: "v1"
input: "data" input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "c1_w" param: "c1_b"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip" type: INNER_PRODUCT bottom: "pool1" top: "ip"
  inner_product_param { num_output: 5 }
}
layers { name: "prob" type: SOFTMAX bottom: "ip" top: "prob" include { phase: TEST } }
layers {
  name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss"
  loss_weight: 0.5 exclude { phase: TEST } loss_param { ignore_label: 3 }
}
"""


def test_v1_layers_become_modern_layers():
    net = config.upgrade_net(_parse(V1_NET))
    assert not net.layers
    names = [(layer.name, layer.type) for layer in net.layer]
    assert names == [("input", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"),
                     ("pool1", "Pooling"), ("ip", "InnerProduct"), ("prob", "Softmax"),
                     ("loss", "SoftmaxWithLoss")]
    conv = net.layer[1]
    specs = [(p.name, p.lr_mult, p.decay_mult) for p in conv.param]
    assert specs == [("c1_w", 1.0, 1.0), ("c1_b", 2.0, 0.0)]
    assert conv.convolution_param.num_output == 4
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert list(conv.bottom) == ["data"] and list(conv.top) == ["conv1"]
    assert net.layer[3].pooling_param.stride == 2
    assert net.layer[5].include[0].phase == pb.TEST
    loss = net.layer[6]
    assert list(loss.loss_weight) == [0.5]
    assert loss.exclude[0].phase == pb.TEST
    assert loss.loss_param.ignore_label == 3


def test_upgraded_v1_net_builds_and_runs():
    net = Net(_parse(V1_NET), "test", seed=0)
    assert net.blobs["prob"].shape == (2, 5)
    out = net.forward(data=np.ones((2, 3, 8, 8), np.float32))
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-5)


def test_every_v1_enum_has_a_type_string():
    enum = pb.V1LayerParameter.LayerType
    assert set(legacy.V1_TYPE_NAMES) == set(enum.values())
    assert legacy.V1_TYPE_NAMES[enum.Value("SOFTMAX_LOSS")] == "SoftmaxWithLoss"
    assert legacy.V1_TYPE_NAMES[enum.Value("HDF5_DATA")] == "HDF5Data"
    assert legacy.V1_TYPE_NAMES[enum.Value("IM2COL")] == "Im2col"


def test_v1_data_layer_transform_fields_move_to_transform_param():
    net = config.upgrade_net(_parse("""
      layers { name: "d" type: DATA top: "data" top: "label"
        data_param { source: "db" batch_size: 4 scale: 0.5 mean_file: "m.binaryproto"
                     crop_size: 7 mirror: true } }
      layers { name: "i" type: IMAGE_DATA top: "x" top: "y"
        image_data_param { source: "list.txt" crop_size: 3 } }
    """))
    data = net.layer[0]
    assert data.type == "Data" and data.data_param.source == "db"
    transform = data.transform_param
    assert (transform.scale, transform.mean_file, transform.crop_size, transform.mirror) == (
        0.5, "m.binaryproto", 7, True)
    assert not data.data_param.HasField("scale") and not data.data_param.HasField("mirror")
    assert net.layer[1].transform_param.crop_size == 3
    assert not net.layer[1].image_data_param.HasField("crop_size")


def test_v1_blob_share_mode_and_blobs_are_kept():
    v1 = pb.V1LayerParameter(name="ip", type=pb.V1LayerParameter.INNER_PRODUCT)
    v1.param.extend(["w"])
    v1.blob_share_mode.extend([pb.V1LayerParameter.PERMISSIVE])
    v1.blobs.add(num=1, channels=1, height=2, width=3).data.extend(range(6))
    layer = legacy.upgrade_v1_layer(v1)
    assert layer.param[0].share_mode == pb.ParamSpec.PERMISSIVE
    assert layer.param[0].name == "w"
    assert (layer.blobs[0].height, layer.blobs[0].width) == (2, 3)
    assert list(layer.blobs[0].data) == list(range(6))


def test_mixing_layer_and_layers_is_refused():
    net = _parse('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }')
    with pytest.raises(ConfigError, match="both `layer` and legacy `layers`"):
        config.upgrade_net(net)


V0_NET = """
name: "v0"
input: "data" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 3 kernelsize: 3 stride: 1 group: 1
          biasterm: false weight_filler { type: "gaussian" std: 0.1 }
          blobs_lr: 1 weight_decay: 1 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.7 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers { layer { name: "ip" type: "innerproduct" num_output: 4 } bottom: "norm1" top: "ip" }
"""


def test_v0_net_upgrades_with_padding_folded_into_the_conv():
    net = config.upgrade_net(_parse(V0_NET))
    assert [layer.type for layer in net.layer] == [
        "Input", "Convolution", "ReLU", "Pooling", "LRN", "Dropout", "InnerProduct"]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is gone
    param = conv.convolution_param
    assert (list(param.pad), list(param.kernel_size), list(param.stride)) == ([1], [3], [1])
    assert param.num_output == 3 and not param.bias_term
    assert param.weight_filler.std == pytest.approx(0.1)
    assert (conv.param[0].lr_mult, conv.param[0].decay_mult) == (1.0, 1.0)
    pool = net.layer[3].pooling_param
    assert (pool.pool, pool.kernel_size, pool.stride) == (pb.PoolingParameter.AVE, 2, 2)
    lrn = net.layer[4].lrn_param
    assert (lrn.local_size, lrn.alpha, lrn.beta) == (3, pytest.approx(0.5), pytest.approx(0.7))
    assert net.layer[5].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert net.layer[6].inner_product_param.num_output == 4


def test_v0_data_layer_settings():
    net = config.upgrade_net(_parse("""
      layers { layer { name: "d" type: "data" source: "db" batchsize: 8 scale: 0.25
                       meanfile: "m" cropsize: 5 mirror: true rand_skip: 3 }
               top: "data" top: "label" }
    """))
    layer = net.layer[0]
    assert layer.type == "Data"
    assert (layer.data_param.source, layer.data_param.batch_size,
            layer.data_param.rand_skip) == ("db", 8, 3)
    t = layer.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.25, "m", 5, True)


def test_v0_padding_into_a_non_conv_layer_is_an_error():
    with pytest.raises(ConfigError, match='padding layer "p".*"relu"'):
        config.upgrade_net(_parse("""
          input: "x"
          layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }
          layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }
        """))


def test_v0_setting_on_the_wrong_layer_type_is_an_error():
    message = '"r" of type "relu" cannot carry the setting "num_output"'
    with pytest.raises(ConfigError, match=message):
        config.upgrade_net(_parse('input: "x" layers { layer { name: "r" type: "relu" '
                                  'num_output: 3 } bottom: "x" top: "x" }'))


def test_v0_unknown_type_is_an_error():
    with pytest.raises(ConfigError, match='unknown type "convolution"'):
        config.upgrade_net(_parse('layers { layer { name: "c" type: "convolution" } }'))


def test_old_batch_norm_param_specs_are_dropped():
    net = config.upgrade_net(_parse(
        'layer { name: "bn" type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 0 } '
        "param { lr_mult: 0 } }"))
    assert len(net.layer[0].param) == 0


def test_mixing_v0_and_v1_layers_is_refused():
    with pytest.raises(ConfigError, match='"r" is in the V1 form but the net also has V0'):
        config.upgrade_net(_parse('input: "x" layers { layer { name: "c" type: "relu" } '
                                  'bottom: "x" top: "x" } '
                                  'layers { name: "r" type: RELU bottom: "x" top: "x" }'))
