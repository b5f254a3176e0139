"""The package's import levels: a module imports only from its own level or below.

Read with ``ast`` (no module is imported), so imports hidden inside functions, methods and
``if TYPE_CHECKING:`` blocks count like top-level ones. The levels follow the data flow
(see README "Layout"):

    0 version, errors, netforge_pb2, files, backend, blob, fillers, huffman
    1 ops   2 data, nfz   3 layers   4 config, graph   5 net, weights
    6 train, deploy, inspect   7 serve   8 cli

A package's ``__init__.py`` sits at its package's level. ``netforge/__init__.py`` and
``netforge/__main__.py`` (and ``netforge/io.py``, pycaffe's name for
``deploy/caffe_io.py``) are the face: exempt from levels, but the face must import lazily
(nothing but the version at import time). Private names (``_x``) and private modules are
never imported from another module, and no module reaches a name through the lazy face
(``from netforge import Net`` would hide an upward import).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "netforge"

LEVELS = {
    "version": 0, "errors": 0, "netforge_pb2": 0, "files": 0, "backend": 0, "blob": 0,
    "fillers": 0, "huffman": 0,
    "ops": 1,
    "data": 2, "nfz": 2,
    "layers": 3,
    "config": 4, "graph": 4,
    "net": 5, "weights": 5,
    "train": 6, "deploy": 6, "inspect": 6,
    "serve": 7,
    "cli": 8,
}
# netforge.io is pycaffe's name for deploy/caffe_io.py: part of the face, like __init__
FACE = {"netforge", "netforge.__main__", "netforge.io"}


def level_of(module: str) -> int | None:
    """The level of a dotted ``netforge...`` module name; None for the face or outside names."""
    parts = module.split(".")
    if parts[0] != "netforge" or module in FACE or len(parts) < 2:
        return None
    if parts[1] not in LEVELS:
        raise KeyError(f"{module}: no level assigned to netforge.{parts[1]} (add it to LEVELS)")
    return LEVELS[parts[1]]


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, importer: str, is_package: bool = False):
    """(line, imported module, imported names) for every import anywhere in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(node, importer, is_package)
            yield node.lineno, target, [alias.name for alias in node.names]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations_in(source: str, importer: str, is_package: bool = False,
                  known_modules: frozenset[str] = frozenset()) -> list[str]:
    """One line per rule broken by the module ``importer`` whose text is ``source``."""
    problems = []
    own = level_of(importer)
    for line, target, names in imports_of(source, importer, is_package):
        if not target.split(".")[0] == "netforge":
            continue
        where = f"{importer.replace('.', '/')}.py:{line}"
        if target == "netforge" and importer not in FACE:
            # the face's lazy names (Net, get_solver, ...) would hide an upward import
            through_face = [n for n in names if f"netforge.{n}" not in known_modules] or (
                [] if names else ["netforge"])
            for name in through_face:
                problems.append(f"{where}: {importer} imports {name} through the package face "
                                "(import it from its own module)")
        # "from netforge.ops import vision" names a module; its level is the module's
        candidates = [target] + [f"{target}.{n}" for n in names if f"{target}.{n}" in known_modules]
        for module in candidates:
            level = level_of(module)
            if own is not None and level is not None and level > own:
                problems.append(f"{where}: level {own} module {importer} imports {module} "
                                f"(level {level})")
        if any(_is_private(part) for part in target.split(".")) and target != importer:
            problems.append(f"{where}: {importer} imports the private module {target}")
        for name in names:
            if _is_private(name) and target != importer:
                problems.append(f"{where}: {importer} imports the private name {name} "
                                f"from {target}")
    return problems


def _face_violations(source: str, importer: str) -> list[str]:
    """Top-level (import-time) netforge imports of the face other than the version module."""
    problems = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [_resolve_from(node, importer, True)])
            for target in targets:
                if target.startswith("netforge") and target != "netforge.version":
                    problems.append(f"{importer}:{node.lineno}: the face imports {target} "
                                    "eagerly (add it to _EXPORTS instead)")
    return problems


def all_modules() -> dict[str, Path]:
    return {module_name(p, PACKAGE_ROOT): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def test_no_module_imports_from_a_higher_level_or_a_private_name():
    modules = all_modules()
    known = frozenset(modules)
    problems = []
    for name, path in modules.items():
        source = path.read_text(encoding="utf-8")
        problems += violations_in(source, name, path.name == "__init__.py", known)
    assert not problems, "import rule violations:\n" + "\n".join(problems)


def test_every_top_level_module_has_a_level():
    for name in all_modules():
        if name not in FACE:
            assert level_of(name) is not None, name


def test_the_package_face_imports_lazily():
    source = (PACKAGE_ROOT / "__init__.py").read_text(encoding="utf-8")
    problems = _face_violations(source, "netforge")
    assert not problems, "\n".join(problems)


# --- the checker itself must be able to fail --------------------------------------------

KNOWN = frozenset({"netforge.ops", "netforge.ops.vision", "netforge.net", "netforge.layers",
                   "netforge.layers.base", "netforge.cli", "netforge.cli.main"})


def test_checker_flags_an_upward_import_hidden_in_a_function():
    source = "import numpy\n\ndef f():\n    from netforge.net import Net\n    return Net\n"
    problems = violations_in(source, "netforge.ops.pooling", known_modules=KNOWN)
    assert problems == ["netforge/ops/pooling.py:4: level 1 module netforge.ops.pooling "
                        "imports netforge.net (level 5)"]


def test_checker_flags_type_checking_and_method_imports():
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from netforge.layers.base import Layer\n"
              "class A:\n    def m(self):\n        import netforge.cli.main\n")
    problems = violations_in(source, "netforge.data.loaders", known_modules=KNOWN)
    assert len(problems) == 2
    assert "netforge.layers.base (level 3)" in problems[0]
    assert "netforge.cli.main (level 8)" in problems[1]


def test_checker_flags_a_module_named_in_from_package_import():
    problems = violations_in("from netforge import net\n", "netforge.ops.vision",
                             known_modules=KNOWN)
    assert problems and "netforge.net (level 5)" in problems[0]


def test_checker_flags_relative_upward_imports():
    problems = violations_in("from ..cli.main import main\n", "netforge.layers.vision",
                             known_modules=KNOWN)
    assert problems and "netforge.cli.main (level 8)" in problems[0]


def test_checker_flags_private_names_and_modules():
    problems = violations_in("from netforge.ops.vision import _stop, valid\n"
                             "import netforge.ops._hidden\n", "netforge.ops.pooling",
                             known_modules=KNOWN)
    assert problems == [
        "netforge/ops/pooling.py:1: netforge.ops.pooling imports the private name _stop "
        "from netforge.ops.vision",
        "netforge/ops/pooling.py:2: netforge.ops.pooling imports the private module "
        "netforge.ops._hidden",
    ]


def test_checker_accepts_same_and_lower_levels_and_outside_packages():
    source = ("import numpy as np\nfrom netforge.errors import NetforgeError\n"
              "from netforge.ops import vision\nfrom netforge.layers.base import Layer\n"
              "from netforge.config.text import parse\nfrom . import common\n")
    assert violations_in(source, "netforge.graph.compile", known_modules=KNOWN) == []


def test_checker_flags_names_taken_through_the_lazy_face():
    problems = violations_in("from netforge import Net, ops\nimport netforge\n",
                             "netforge.layers.vision", known_modules=KNOWN)
    assert problems == [
        "netforge/layers/vision.py:1: netforge.layers.vision imports Net through the package "
        "face (import it from its own module)",
        "netforge/layers/vision.py:2: netforge.layers.vision imports netforge through the "
        "package face (import it from its own module)",
    ]


def test_checker_flags_an_eager_face():
    problems = _face_violations("from netforge.version import __version__\n"
                                "from netforge.net import Net\n", "netforge")
    assert problems == ["netforge:2: the face imports netforge.net eagerly "
                        "(add it to _EXPORTS instead)"]


@pytest.mark.parametrize("name", ["netforge.ops.vision", "netforge.cli", "netforge.version"])
def test_levels_of_known_modules(name):
    assert level_of(name) == {"netforge.ops.vision": 1, "netforge.cli": 8,
                              "netforge.version": 0}[name]


# --- module size --------------------------------------------------------------------------

MAX_LINES = 650  # "modules of about 600 lines at most"; generated code exempt
GENERATED = {"netforge.netforge_pb2"}


def test_no_module_is_much_over_600_lines():
    too_long = []
    for name, path in all_modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if name not in GENERATED and lines > MAX_LINES:
            too_long.append(f"{path.relative_to(PACKAGE_ROOT.parent)}: {lines} lines")
    assert not too_long, "split these modules by sub-family:\n" + "\n".join(too_long)
