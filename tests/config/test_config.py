"""Config loading: parse errors with file:line:col, NetState filtering, legacy upgrades."""

import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError


def _net(text: str) -> pb.NetParameter:
    return config.upgrade_net(config.parse_text(text, pb.NetParameter(), "t.prototxt"))


def test_unknown_field_names_file_line_column_and_message(tmp_path):
    path = tmp_path / "lenet.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "c"\n  type: "Convolution"\n'
                    "  convolution_param { kernal_size: 5 }\n}\n")
    with pytest.raises(ConfigError) as err:
        config.load_net_param(path)
    message = str(err.value)
    assert message.startswith(f"{path}:5:")
    assert 'unknown field "kernal_size" in ConvolutionParameter' in message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load_net_param(tmp_path / "nope.prototxt")


RULES = [
    # (rule text, state (phase, level, stages), matches)
    ("phase: TRAIN", ("TRAIN", 0, []), True),
    ("phase: TRAIN", ("TEST", 0, []), False),
    ("min_level: 2", ("TEST", 1, []), False),
    ("min_level: 2", ("TEST", 2, []), True),
    ("max_level: 1", ("TEST", 2, []), False),
    ('stage: "a" stage: "b"', ("TEST", 0, ["a"]), False),
    ('stage: "a" stage: "b"', ("TEST", 0, ["b", "a", "c"]), True),
    ('not_stage: "x"', ("TEST", 0, ["x"]), False),
    ('not_stage: "x"', ("TEST", 0, ["y"]), True),
    ("", ("TRAIN", 5, ["q"]), True),
]


@pytest.mark.parametrize("rule_text, state, expected", RULES)
def test_state_meets_rule(rule_text, state, expected):
    rule = config.parse_text(rule_text, pb.NetStateRule())
    assert config.state_meets_rule(config.make_state(*state), rule) is expected


def test_filter_include_and_exclude():
    net = _net("""
      layer { name: "a" type: "ReLU" include { phase: TRAIN } }
      layer { name: "b" type: "ReLU" include { phase: TEST } include { stage: "s" } }
      layer { name: "c" type: "ReLU" exclude { phase: TEST } }
      layer { name: "d" type: "ReLU" }
    """)
    names = lambda state: [layer.name for layer in config.filter_net(net, state).layer]  # noqa: E731
    assert names(config.make_state("TRAIN")) == ["a", "c", "d"]
    assert names(config.make_state("TEST")) == ["b", "d"]
    assert names(config.make_state("TRAIN", stages=["s"])) == ["a", "b", "c", "d"]


def test_include_and_exclude_together_is_an_error():
    net = _net('layer { name: "a" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(ConfigError, match='layer "a" has both include and exclude'):
        config.filter_net(net, config.make_state("TRAIN"))


def test_legacy_input_dim_header_becomes_first_input_layer():
    net = _net('input: "data" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224\n'
               'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    first = net.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data"])
    assert list(first.input_param.shape[0].dim) == [1, 3, 224, 224]
    assert not net.input and not net.input_dim
    assert net.layer[1].name == "r"


def test_legacy_input_shape_header_with_two_inputs():
    net = _net('input: "a" input_shape { dim: 2 dim: 3 } input: "b" input_shape { dim: 2 }')
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[2, 3], [2]]


def test_bad_input_dim_count_is_an_error():
    with pytest.raises(ConfigError, match="4 values per input"):
        _net('input: "a" input_dim: 1 input_dim: 2')


def test_ceil_mode_alias_maps_to_round_mode():
    net = _net('layer { name: "p" type: "Pooling" pooling_param { ceil_mode: false } }')
    assert net.layer[0].pooling_param.round_mode == pb.PoolingParameter.FLOOR


def test_deprecated_data_param_transform_fields_move():
    net = _net('layer { name: "d" type: "Data" data_param { scale: 0.5 mirror: true } }')
    assert net.layer[0].transform_param.scale == 0.5
    assert net.layer[0].transform_param.mirror


def test_solver_type_enum_is_upgraded(tmp_path):
    path = tmp_path / "s.prototxt"
    path.write_text('solver_type: ADAM\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    assert config.load_solver_param(path).type == "Adam"


def test_solver_net_forms(tmp_path):
    (tmp_path / "n.prototxt").write_text('name: "n"')
    solver = config.parse_text('net: "n.prototxt" test_iter: 3 test_iter: 4 test_interval: 5',
                               pb.SolverParameter())
    train, tests, _ = config.solver_net_params(solver, tmp_path / "s.prototxt")
    assert train.name == "n" and len(tests) == 2
    inline = config.parse_text('train_net_param { name: "t" } test_net_param { name: "v" } '
                               "test_iter: 1 test_interval: 1", pb.SolverParameter())
    train, tests, _ = config.solver_net_params(inline, tmp_path / "s.prototxt")
    assert (train.name, [t.name for t in tests]) == ("t", ["v"])


def test_solver_without_net_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="exactly one train net"):
        config.solver_net_params(pb.SolverParameter(), tmp_path / "s.prototxt")


def test_v1_net_file_is_upgraded_on_load(tmp_path):
    path = tmp_path / "old.prototxt"
    path.write_text('name: "old"\nlayers { name: "r" type: RELU bottom: "x" top: "x" }\n')
    net = config.load_net_param(path)
    assert not net.layers
    assert [(layer.name, layer.type) for layer in net.layer] == [("r", "ReLU")]


def test_v1_inline_solver_net_is_upgraded(tmp_path):
    # Caffe's lenet_consolidated_solver keeps its whole net inline in the V1 syntax.
    solver = config.parse_text(
        'net_param { name: "n" layers { name: "ip" type: INNER_PRODUCT blobs_lr: 1 '
        "blobs_lr: 2 weight_decay: 1 weight_decay: 0 inner_product_param { num_output: 3 } } } "
        "test_iter: 1 test_interval: 1",
        pb.SolverParameter())
    train, tests, _ = config.solver_net_params(solver, tmp_path / "s.prototxt")
    layer = train.layer[0]
    assert layer.type == "InnerProduct"
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)]
    assert tests[0].layer[0].type == "InnerProduct"
