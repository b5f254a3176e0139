"""The package face: ``import netforge`` stays cheap, kernels load without protobuf, and the
pycaffe-shaped public API keeps its names (netforge/__init__.py's lazy _EXPORTS table)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import netforge

ROOT = Path(__file__).resolve().parents[1]


def modules_loaded_by(statement: str) -> set[str]:
    """Module names in sys.modules after running ``statement`` in a fresh interpreter."""
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=120, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def _heavy(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_import_netforge_loads_neither_numpy_nor_protobuf():
    loaded = modules_loaded_by("import netforge")
    assert not _heavy(loaded, "numpy")
    assert not _heavy(loaded, "google.protobuf")
    assert _heavy(loaded, "netforge") == ["netforge", "netforge.version"]


def test_import_netforge_ops_loads_no_protobuf():
    loaded = modules_loaded_by("import netforge.ops")
    assert not _heavy(loaded, "google.protobuf")


def test_every_kernel_module_loads_without_protobuf_or_the_rest_of_netforge():
    names = sorted(p.stem for p in (ROOT / "netforge" / "ops").glob("*.py")
                   if p.stem != "__init__")
    loaded = modules_loaded_by("\n".join(f"import netforge.ops.{n}" for n in names))
    assert "netforge.ops.pooling" in loaded  # the statement did import the kernels
    assert not _heavy(loaded, "google.protobuf")
    outside = [m for m in _heavy(loaded, "netforge")
               if not m.startswith("netforge.ops")
               and m not in {"netforge", "netforge.version", "netforge.errors",
                             "netforge.backend"}]
    assert outside == []


def test_the_checker_above_sees_protobuf_when_it_is_loaded():
    # the same helper must report protobuf where it is imported, or the tests above prove nothing
    assert _heavy(modules_loaded_by("import netforge.netforge_pb2"), "google.protobuf")


@pytest.mark.parametrize(("name", "module", "attribute"), [
    ("Net", "netforge.net", "Net"),
    ("Solver", "netforge.train.solver", "Solver"),
    ("get_solver", "netforge.train.solver", "get_solver"),
    ("Classifier", "netforge.deploy.classifier", "Classifier"),
    ("load_frozen", "netforge.deploy.frozen", "load_frozen"),
    ("Layer", "netforge.layers.python_layer", "UserLayer"),
    ("set_mode_cpu", "netforge.backend", "set_mode_cpu"),
    ("set_mode_gpu", "netforge.backend", "set_mode_gpu"),
    ("set_device", "netforge.backend", "set_device"),
])
def test_public_names_are_the_library_objects(name, module, attribute):
    import importlib

    assert getattr(netforge, name) is getattr(importlib.import_module(module), attribute)
    assert name in netforge.__all__ and name in dir(netforge)


def test_the_rest_of_the_public_api():
    from netforge.version import __version__

    assert netforge.__version__ == __version__ and __version__.count(".") >= 1
    assert (netforge.TRAIN, netforge.TEST) == ("train", "test")
    assert "Convolution" in netforge.layer_type_list()
    assert netforge.layer_type_list() == sorted(netforge.layer_type_list())
    for name in ("layer_type_list", "TRAIN", "TEST", "__version__", "io"):
        assert name in netforge.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nett'"):
        netforge.Nett  # noqa: B018


def test_io_is_pycaffes_caffe_io_however_it_is_imported():
    import netforge.deploy.caffe_io as caffe_io
    import netforge.io
    from netforge import io

    assert io is caffe_io and netforge.io is caffe_io
    for name in ("Transformer", "load_image", "resize_image", "oversample",
                 "blobproto_to_array", "array_to_blobproto"):
        assert callable(getattr(io, name)), name


def test_import_netforge_io_first_in_a_fresh_interpreter():
    loaded = modules_loaded_by("import netforge.io\nimport netforge\n"
                               "assert netforge.io.Transformer is "
                               "netforge.deploy.caffe_io.Transformer")
    assert "netforge.deploy.caffe_io" in loaded
