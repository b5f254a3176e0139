"""The configs of tools/compress_experiments.sh: the distillation net's teacher must be
configs/lenet_teacher_train_test.prototxt's 2x-wide LeNet under the same layer names (so
--weights loads it by name), frozen and without its dropout; its student must be the student
net's layers exactly (so a distilled student tests with
configs/lenet_student_train_test.prototxt); the DSD recipe must load."""

from __future__ import annotations

from pathlib import Path

import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.deploy.compress.recipe import load_recipe

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
WEIGHTED = ("Convolution", "InnerProduct")


def _net(name: str) -> pb.NetParameter:
    path = CONFIGS / name
    return config.parse_text(path.read_text(), pb.NetParameter(), str(path))


def _layers(net, names=None) -> dict[str, pb.LayerParameter]:
    return {layer.name: layer for layer in net.layer if names is None or layer.name in names}


def _shape_fields(layer) -> tuple:
    """What decides a layer's params' shapes: its type, wiring and num_output."""
    param = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
    return layer.type, tuple(layer.bottom), tuple(layer.top), param.num_output


def test_teacher_is_the_wide_lenet_under_its_own_names_and_frozen():
    lenet = _net("lenet_train_test.prototxt")
    wide = _net("lenet_teacher_train_test.prototxt")
    distill = _net("lenet_distill_train_test.prototxt")
    teacher_names = {layer.name for layer in wide.layer if layer.type in WEIGHTED}
    assert teacher_names == {"conv1", "conv2", "ip1", "ip2"}
    # twice LeNet's width in every hidden layer, the same 10 outputs
    lenet_layers = _layers(lenet, teacher_names)
    for name, layer in _layers(wide, teacher_names).items():
        factor = 1 if name == "ip2" else 2
        assert _shape_fields(layer)[3] == factor * _shape_fields(lenet_layers[name])[3]
    teacher = _layers(distill, teacher_names)
    assert set(teacher) == teacher_names
    for name, layer in _layers(wide, teacher_names).items():
        assert _shape_fields(teacher[name]) == _shape_fields(layer)
        assert len(teacher[name].param) == 2  # weights and bias
        assert all(p.lr_mult == 0 and p.decay_mult == 0 for p in teacher[name].param)
    # the teacher trains with dropout; frozen in the distillation net, it has none
    assert [layer.name for layer in wide.layer if layer.type == "Dropout"] == ["drop1"]
    assert not [layer for layer in distill.layer if layer.type == "Dropout"]


def test_student_layers_match_the_student_net_and_learn():
    distill = _net("lenet_distill_train_test.prototxt")
    student = _net("lenet_student_train_test.prototxt")
    weighted = {layer.name: layer for layer in student.layer if layer.type in WEIGHTED}
    assert [weighted[n].convolution_param.num_output for n in ("s_conv1", "s_conv2")] == [10, 25]
    assert [weighted[n].inner_product_param.num_output for n in ("s_ip1", "s_ip2")] == [250, 10]
    in_distill = _layers(distill, set(weighted))
    for name, layer in weighted.items():
        assert in_distill[name] == layer
        assert all(p.lr_mult > 0 for p in layer.param)


def test_distill_losses_combine_hard_and_soft_by_loss_weight():
    layers = _layers(_net("lenet_distill_train_test.prototxt"))
    hard, soft = layers["loss"], layers["distill"]
    assert (hard.type, list(hard.bottom)) == ("SoftmaxWithLoss", ["s_ip2", "label"])
    assert (soft.type, list(soft.bottom)) == ("Distillation", ["s_ip2", "ip2"])
    # Hinton et al.'s mix: 0.9 on the (already T²-scaled) soft term, 0.1 on the hard labels
    assert list(hard.loss_weight) == [pytest.approx(0.1)]
    assert list(soft.loss_weight) == [pytest.approx(0.9)]
    assert soft.distillation_param.temperature == 4
    assert list(layers["accuracy"].bottom) == ["s_ip2", "label"]


def test_dsd_recipe_is_sparse_then_dense_at_a_tenth_of_the_rate():
    recipe = load_recipe(CONFIGS / "lenet_dsd_recipe.prototxt")
    prune, redense = recipe.stage
    kind = pb.CompressionStage
    assert (prune.kind, redense.kind) == (kind.PRUNE, kind.REDENSE)
    assert prune.finetune_iter == redense.finetune_iter == 1000
    assert abs(prune.sparsity - 0.5) < 1e-7
    assert abs(redense.base_lr - prune.base_lr / 10) < 1e-7
