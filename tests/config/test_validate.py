"""The load-time validation pass: each refused value is named with file, line, layer, field."""

from __future__ import annotations

import pytest

from netforge import config
from netforge.config.locate import locate
from netforge.errors import ConfigError

SOLVER_HEAD = 'net: "n.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 10\n'


@pytest.mark.parametrize("extra, line, message", [
    ("momentum: 1.0\n", 5, "momentum must be in [0, 1), got 1"),
    ("weight_decay: -0.1\n", 5, "weight_decay must be >= 0, got -0.1"),
    ("iter_size: 0\n", 5, "iter_size must be >= 1, got 0"),
    ("test_iter: 0\ntest_interval: 5\n", 5, "test_iter must be > 0, got 0"),
    ("test_interval: 5\n", 5, "test_interval is set but no test_iter"),
    ('type: "Adam"\nmomentum2: 1\n', 6, "momentum2 must be in [0, 1)"),
    ('type: "AdaGrad"\nmomentum: 0.9\n', 6, "AdaGrad does not use momentum"),
    ('type: "Adamm"\n', 5, 'unknown solver type "Adamm"'),
])
def test_solver_values_out_of_range_name_line_and_field(tmp_path, extra, line, message):
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER_HEAD + extra)
    with pytest.raises(ConfigError) as info:
        config.load_solver_param(path)
    assert str(info.value).startswith(f"{path}:{line}:1: ")
    assert message in str(info.value)


def test_negative_base_lr_is_refused_on_its_line(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "n.prototxt"\n# a comment { with braces }\n  base_lr: -0.01\n')
    with pytest.raises(ConfigError,
                       match=r"solver.prototxt:3:3: base_lr must be >= 0, got -0.01"):
        config.load_solver_param(path)


@pytest.mark.parametrize("schedule, line, message", [
    ('lr_policy: "multistep"\ngamma: 0.1\n', 1,
     'lr_policy "multistep" needs at least one stepvalue'),
    ('lr_policy: "multistep"\ngamma: 0.1\nstepvalue: 100\nstepvalue: 50\n', 4,
     "stepvalue must increase: 100 then 50"),
    ('lr_policy: "multistep"\ngamma: 0.1\nstepvalue: [100, 200, 150]\n', 3,
     "stepvalue must increase: 200 then 150"),
    ('lr_policy: "step"\ngamma: 0.1\n', 1, 'lr_policy "step" needs stepsize > 0'),
    ('lr_policy: "step"\nstepsize: 10\n', 1, 'lr_policy "step" needs gamma'),
    ('lr_policy: "poly"\npower: 1\n', 1, 'lr_policy "poly" needs max_iter > 0'),
    ('lr_policy: "cosine"\n', 1, 'unknown lr_policy "cosine"'),
])
def test_lr_schedules_missing_or_contradicting_fields(tmp_path, schedule, line, message):
    path = tmp_path / "solver.prototxt"
    path.write_text(schedule + 'net: "n.prototxt"\nbase_lr: 0.1\n')
    with pytest.raises(ConfigError) as info:
        config.load_solver_param(path)
    assert str(info.value).startswith(f"{path}:{line}:")
    assert message in str(info.value)


def test_a_good_solver_passes(tmp_path):
    path = tmp_path / "solver.prototxt"
    head = SOLVER_HEAD.replace('lr_policy: "fixed"\n', "")
    path.write_text(head + 'lr_policy: "multistep"\ngamma: 0.1\nstepvalue: 3\n'
                    "stepvalue: 6\nmomentum: 0.9\nweight_decay: 5e-4\ntest_iter: 2\n"
                    "test_interval: 5\n")
    assert list(config.load_solver_param(path).stepvalue) == [3, 6]


NET = """name: "n"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 4
    kernel_size: 3
    {BAD}
  }
}
"""


@pytest.mark.parametrize("bad, message", [
    ("stride: 0", "convolution_param.stride must be > 0, got 0"),
    ("group: 3", "convolution_param.group (3) must be > 0 and divide num_output (4)"),
    ("dilation: 0", "convolution_param.dilation must be > 0, got 0"),
])
def test_layer_parameters_name_file_line_layer_and_field(tmp_path, bad, message):
    path = tmp_path / "net.prototxt"
    path.write_text(NET.replace("{BAD}", bad))
    with pytest.raises(ConfigError) as info:
        config.load_net_param(path)
    assert str(info.value) == f'{path}:12:5: layer "conv1" (Convolution): {message}'


@pytest.mark.parametrize("layer, message", [
    ('type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 1.0 }',
     "dropout_param.dropout_ratio must be in [0, 1), got 1"),
    ('type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }',
     "lrn_param.local_size must be odd and > 0, got 4"),
    ('type: "InnerProduct" bottom: "x" top: "y"', "inner_product_param.num_output must be > 0"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX }',
     "pooling_param needs kernel_size"),
    ('type: "Data" top: "x" data_param { source: "db" batch_size: 0 }',
     "data_param.batch_size must be > 0, got 0"),
    ('type: "Data" top: "x" data_param { batch_size: 4 }', "data_param.source is required"),
    ('type: "Data" top: "x" data_param { source: "db" batch_size: 4 } '
     'transform_param { mean_file: "m" mean_value: 3 }', "give mean_file or mean_value, not both"),
    ('type: "Eltwise" bottom: "a" bottom: "b" top: "c" '
     'eltwise_param { operation: PROD coeff: 1 coeff: 2 }', "coeff applies to operation SUM"),
    ('type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { eps: 0 }',
     "batch_norm_param.eps must be > 0"),
    ('type: "Slice" bottom: "x" top: "a" top: "b" top: "c" slice_param { slice_point: 3 '
     "slice_point: 2 }", "slice_point must be positive and increasing"),
])
def test_layer_rules(tmp_path, layer, message):
    path = tmp_path / "net.prototxt"
    path.write_text(f'name: "n"\n\nlayer {{ name: "L" {layer} }}\n')
    with pytest.raises(ConfigError) as info:
        config.load_net_param(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3:") and 'layer "L" (' in text and message in text


def test_v1_layers_and_input_header_keep_the_users_line(tmp_path):
    path = tmp_path / "old.prototxt"
    path.write_text('input: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 4\ninput_dim: 4\n'
                    'layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"\n'
                    "  inner_product_param { num_output: 0 } }\n")
    with pytest.raises(ConfigError, match=r"old.prototxt:7:25: layer \"ip\" \(InnerProduct\)"):
        config.load_net_param(path)


def test_locator_handles_strings_comments_lists_and_angle_brackets():
    text = ('a: "x { y" # } not a close\nb < c: 1 >\nd: [1,\n 2]\nb { c: 2 }\n')
    assert locate(text, [("b", 1), ("c", 0)]) == (5, 5)
    assert locate(text, [("b", 0), ("c", 0)]) == (2, 5)
    assert locate(text, [("d", 1)]) == (3, 6)
    assert locate(text, [("missing", 0)]) is None
    assert locate(text, [("b", 0), ("missing", 0)]) == (2, 1)


def test_nets_built_in_code_are_validated_too():
    from netforge import NetSpec
    from netforge import layers as L
    from netforge.net import Net

    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 5, 5]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, stride=0)
    with pytest.raises(ConfigError, match=r'layer "conv" \(Convolution\): '
                                          r"convolution_param.stride must be > 0, got 0"):
        Net(n.to_proto(), "test")
