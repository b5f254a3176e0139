"""The Python layer: a user module beside the prototxt, loaded and run with pycaffe's
conventions; forward and gradients checked; configuration errors name layer and module."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from netforge import Net
from netforge.errors import ConfigError
from netforge.inspect.gradient_check import check_gradients

# y = w[c] * x² per channel, w a learnable blob (initialised from param_str); written as a
# pycaffe user would, without deriving from any netforge class.
SQUARE = '''
import numpy as np

class ScaledSquare:
    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("ScaledSquare takes one bottom")
        self.blobs.add_blob(bottom[0].channels)
        self.blobs[0].data[...] = [float(v) for v in self.param_str.split(",")]
        self.seen_phase = self.phase

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        w = self.blobs[0].data.reshape(1, -1, *([1] * (bottom[0].data.ndim - 2)))
        top[0].data[...] = w * bottom[0].data ** 2

    def backward(self, top, propagate_down, bottom):
        x, dy = bottom[0].data, top[0].diff
        w = self.blobs[0].data.reshape(1, -1, *([1] * (x.ndim - 2)))
        axes = tuple(i for i in range(x.ndim) if i != 1)
        self.blobs[0].diff[...] += (dy * x ** 2).sum(axis=axes)
        if propagate_down[0]:
            bottom[0].diff[...] = 2 * w * x * dy
'''

# pycaffe's examples/pycaffe/layers: a Euclidean loss (it ignores the top diff, as there).
EUCLID = '''
import numpy as np

class EuclideanLossLayer:
    def __init__(self, param):
        self.layer_param = param

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
'''

# A source layer whose batch size changes at run time (reshape is called before each forward).
GROWING = '''
class Growing:
    def setup(self, bottom, top):
        self.n = 1

    def reshape(self, bottom, top):
        top[0].reshape(self.n, 2)

    def forward(self, bottom, top):
        top[0].data[...] = 1.0
        self.n += 1
'''

INPUT = 'layer {{ name: "{0}" type: "Input" top: "{0}" input_param {{ shape {{ {1} }} }} }}\n'


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write ``<name>.py`` beside the net file; forget the module afterwards. The tests
    using it allow Python layers (the environment variable; refused by default)."""
    monkeypatch.setenv("NETFORGE_ALLOW_PYTHON_LAYERS", "1")
    written = []

    def write(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)


def write_net(tmp_path, body: str):
    path = tmp_path / "net.prototxt"
    path.write_text("force_backward: true\n" + body)
    return str(path)


def python_layer(bottoms, tops, module, cls, extra="", tail=""):
    return ('layer { name: "py" type: "Python" '
            + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops)
            + f' python_param {{ module: "{module}" layer: "{cls}" {extra} }} {tail} }}\n')


def test_user_layer_beside_the_prototxt_forward_and_gradients(tmp_path, user_module):
    user_module("nf_py_square", SQUARE)
    path = write_net(tmp_path, INPUT.format("x", "dim: 2 dim: 3 dim: 2")
                     + python_layer(["x"], ["y"], "nf_py_square", "ScaledSquare",
                                    'param_str: "0.5,-1,2"'))
    net = Net(path, phase="train", dtype=np.float64)
    step = net.plan.steps[-1]
    assert step.layer.user.seen_phase == "train"
    assert net.params["py"][0].shape == (3,)
    assert [p.blob for p in net.learnable_params] == step.layer.blobs
    x = np.random.default_rng(0).standard_normal((2, 3, 2))
    out = net.forward(x=x)
    want = np.array([0.5, -1.0, 2.0])[None, :, None] * x**2
    np.testing.assert_allclose(out["y"], want, rtol=1e-12)
    assert not check_gradients(net.plan, step)


def test_python_loss_layer_needs_an_explicit_loss_weight(tmp_path, user_module):
    user_module("nf_py_euclid", EUCLID)
    inputs = INPUT.format("a", "dim: 4 dim: 3") + INPUT.format("b", "dim: 4 dim: 3")
    layer = python_layer(["a", "b"], ["loss"], "nf_py_euclid", "EuclideanLossLayer")
    a, b = np.random.default_rng(1).standard_normal((2, 4, 3))
    unweighted = Net(write_net(tmp_path, inputs + layer), phase="train", dtype=np.float64)
    out = unweighted.forward(a=a, b=b)
    assert float(out["loss"][0]) == pytest.approx(((a - b) ** 2).sum() / 8, rel=1e-6)
    assert unweighted.loss() == 0.0  # Caffe: a Python layer is not a loss layer by type
    layer = python_layer(["a", "b"], ["loss"], "nf_py_euclid", "EuclideanLossLayer",
                         tail="loss_weight: 1")
    weighted = Net(write_net(tmp_path, inputs + layer), phase="train", dtype=np.float64)
    assert weighted.plan.steps[-1].loss_weights == [1.0]
    weighted.forward(a=a, b=b)
    assert weighted.loss() == pytest.approx(((a - b) ** 2).sum() / 8, rel=1e-6)
    weighted.backward()
    np.testing.assert_allclose(weighted.blobs["a"].diff, (a - b) / 4, rtol=1e-6)
    np.testing.assert_allclose(weighted.blobs["b"].diff, -(a - b) / 4, rtol=1e-6)


def test_user_reshape_at_run_time_reshapes_the_layers_after(tmp_path, user_module):
    user_module("nf_py_growing", GROWING)
    path = write_net(tmp_path, python_layer([], ["x"], "nf_py_growing", "Growing") +
                     'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" '
                     'inner_product_param { num_output: 1 weight_filler { type: "constant" '
                     "value: 1 } } }\n")
    net = Net(path, phase="test", dtype=np.float64)
    assert net.blobs["ip"].shape == (1, 1)
    for n in (1, 2, 3):
        out = net.forward()
        np.testing.assert_array_equal(out["ip"], np.full((n, 1), 2.0))


@pytest.mark.parametrize("module, cls, source, match", [
    ("nf_py_missing_module", "L", None, 'cannot import python_param.module "nf_py_missing'),
    ("nf_py_no_class", "Missing", "class Other:\n    pass\n", 'has no class "Missing"'),
    ("nf_py_broken", "L", "import nf_py_not_there\n", "cannot import"),
    ("nf_py_bad_setup", "L", "class L:\n    def setup(self, bottom, top):\n"
     "        raise ValueError('needs one bottom')\n", r"L.setup\(\) raised ValueError"),
    ("nf_py_no_shape", "L", "class L:\n    def setup(self, bottom, top): pass\n"
     "    def reshape(self, bottom, top): pass\n", "without a shape"),
])
def test_user_layer_errors_name_the_layer(tmp_path, user_module, module, cls, source, match):
    if source is not None:
        user_module(module, source)
    path = write_net(tmp_path, INPUT.format("x", "dim: 2")
                     + python_layer(["x"], ["y"], module, cls))
    with pytest.raises(ConfigError, match=match) as info:
        Net(path, phase="train")
    assert 'Python "py"' in str(info.value)


def test_errors_in_forward_keep_the_users_exception(tmp_path, user_module):
    user_module("nf_py_fails", "class L:\n    def setup(self, b, t): pass\n"
                "    def reshape(self, b, t): t[0].reshape(1)\n"
                "    def forward(self, b, t): raise KeyError('oops')\n")
    net = Net(write_net(tmp_path, python_layer([], ["y"], "nf_py_fails", "L")), phase="test")
    with pytest.raises(KeyError) as info:
        net.forward()
    assert any('Python "py"' in note for note in info.value.__notes__)


MARKING = """\
import pathlib
pathlib.Path(__file__).with_name("ran.txt").write_text("imported")
class Square:
    def setup(self, bottom, top): pass
    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top): top[0].data[...] = bottom[0].data ** 2
    def backward(self, top, propagate_down, bottom): pass
"""


def _marking_net(tmp_path):
    (tmp_path / "nf_py_marking.py").write_text(MARKING)
    return write_net(tmp_path, INPUT.format("x", "dim: 2 dim: 3")
                     + python_layer(["x"], ["y"], "nf_py_marking", "Square"))


def test_loading_a_net_never_runs_its_python_module_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("NETFORGE_ALLOW_PYTHON_LAYERS", raising=False)
    path = _marking_net(tmp_path)
    with pytest.raises(ConfigError, match='would import and run python_param.module '
                                          '"nf_py_marking"'):
        Net(path, phase="test")
    assert not (tmp_path / "ran.txt").exists() and "nf_py_marking" not in sys.modules
    try:
        net = Net(path, phase="test", allow_python_layers=True)  # this net only
        x = np.arange(6.0).reshape(2, 3)
        np.testing.assert_array_equal(net.forward(x=x)["y"], x ** 2)
        assert (tmp_path / "ran.txt").exists()
        with pytest.raises(ConfigError, match="would import"):
            Net(path, phase="test")  # the next net is refused again
        import netforge
        netforge.allow_python_layers()  # the process
        try:
            Net(path, phase="test")
        finally:
            netforge.allow_python_layers(False)
        with pytest.raises(ConfigError, match="would import"):
            Net(path, phase="test", allow_python_layers=False)
    finally:
        sys.modules.pop("nf_py_marking", None)


def test_cli_runs_python_layers_only_with_the_flag(tmp_path, monkeypatch, capsys):
    from netforge.cli.main import main

    monkeypatch.delenv("NETFORGE_ALLOW_PYTHON_LAYERS", raising=False)
    path = _marking_net(tmp_path)
    try:
        with pytest.raises(SystemExit) as info:
            main(["-q", "summary", path])
        assert info.value.code == 2 and not (tmp_path / "ran.txt").exists()
        assert "--allow-python-layers" in capsys.readouterr().err
        main(["-q", "--allow-python-layers", "summary", path])
        assert (tmp_path / "ran.txt").exists()
    finally:
        import netforge
        netforge.allow_python_layers(False)
        sys.modules.pop("nf_py_marking", None)
