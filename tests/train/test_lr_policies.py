"""Each lr policy against its closed form (Caffe's GetLearningRate)."""

import math

import pytest

from netforge import config
from netforge import netforge_pb2 as pb
from netforge.errors import ConfigError
from netforge.train import lr_policies


def _param(text):
    return config.parse_text("base_lr: 0.1 " + text, pb.SolverParameter())


CASES = [
    ('lr_policy: "fixed"', 1234, 0.1),
    ('lr_policy: "step" gamma: 0.5 stepsize: 10', 25, 0.1 * 0.5**2),
    ('lr_policy: "exp" gamma: 0.99', 7, 0.1 * 0.99**7),
    ('lr_policy: "inv" gamma: 0.0001 power: 0.75', 300, 0.1 * (1 + 0.0001 * 300) ** -0.75),
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: 10 stepvalue: 20', 9, 0.1),
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: 10 stepvalue: 20', 10, 0.1 * 0.1),
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: 10 stepvalue: 20', 25, 0.1 * 0.01),
    ('lr_policy: "poly" power: 2 max_iter: 100', 30, 0.1 * (1 - 0.3) ** 2),
    ('lr_policy: "sigmoid" gamma: -0.1 stepsize: 50', 60, 0.1 / (1 + math.exp(0.1 * 10))),
]


@pytest.mark.parametrize("text, it, expected", CASES)
def test_policy_closed_form(text, it, expected):
    assert lr_policies.learning_rate(_param(text), it) == pytest.approx(expected, rel=1e-6)


def test_multistep_current_step():
    p = _param('lr_policy: "multistep" stepvalue: 10 stepvalue: 20')
    steps = [lr_policies.multistep_current_step(p, i) for i in (0, 10, 19, 20, 99)]
    assert steps == [0, 1, 1, 2, 2]


def test_unknown_policy_lists_known_ones():
    with pytest.raises(ConfigError, match="known policies: fixed, step"):
        lr_policies.learning_rate(_param('lr_policy: "cosine"'), 0)
