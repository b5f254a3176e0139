"""netforge/ops/cuda's import discipline, read with ``ast`` (CuPy is not installed here):
only ``cudnn_adapter.py`` imports ``cudnn``; the xp-generic ops import ``netforge.ops.cuda``
modules only inside ``if is_cupy(xp)`` branches of functions, never at module level;
the package face itself imports neither CuPy nor cuDNN."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

OPS = Path(__file__).resolve().parents[2] / "netforge" / "ops"


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node, [node.module or ""]


def test_only_the_adapter_imports_cudnn():
    importers = sorted(
        path.name for path in (OPS / "cuda").glob("*.py")
        for _, names in _imports(ast.parse(path.read_text()))
        if any(n.split(".")[0] == "cudnn" for n in names))
    assert importers == ["cudnn_adapter.py"]


def test_numpy_ops_reach_cuda_modules_only_inside_a_cupy_branch():
    hooks = 0
    for path in OPS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level: never
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any("cuda" in n or n.split(".")[0] in ("cupy", "cudnn")
                               for n in names), f"{path.name}: module-level GPU import"
        for branch in ast.walk(tree):
            if not isinstance(branch, ast.If):
                continue
            test = ast.unparse(branch.test)
            for node in ast.walk(branch):
                if isinstance(node, ast.ImportFrom) and "ops.cuda" in (node.module or ""):
                    assert "is_cupy(xp)" in test, f"{path.name}:{node.lineno}: {test}"
                    hooks += 1
    assert hooks >= 10  # pooling x4, LRN x2, conv x2, linear x2


def test_the_cuda_package_face_needs_no_cupy():
    sys.modules.pop("netforge.ops.cuda", None)
    cuda = importlib.import_module("netforge.ops.cuda")
    assert isinstance(cuda.cupy_installed(), bool)
    assert isinstance(cuda.cudnn_frontend_installed(), bool)
    assert "cupy" not in sys.modules or cuda.cupy_installed()
