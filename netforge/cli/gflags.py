"""Caffe's gflags spellings on the command line: ``netforge train -solver s.prototxt
-gpu 0`` as ``caffe train -solver ...`` is written in years of scripts.

gflags takes ``-name``, ``--name``, ``-name=value`` and underscores (``-sigint_effect``);
click takes ``--name`` with dashes and reads ``-solver`` as ``-s -o -l ...``. Before click
parses, each ``-name`` whose ``--name`` is an option of the command is rewritten; anything
else is left for click to judge (so ``-q``, ``-1`` and file names are untouched).
"""

from __future__ import annotations

import re

import click

_GFLAG = re.compile(r"^--?([A-Za-z][A-Za-z0-9_]+)(=.*)?$")


def translate(argv: list[str], group: click.Group) -> list[str]:
    """``argv`` with gflags-style options of its subcommand in click's spelling."""
    args = list(argv)
    command = next((group.commands.get(a) for a in args if a in group.commands), None)
    if command is None:
        return args
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    out = []
    for arg in args:
        match = _GFLAG.match(arg)
        if match and (not arg.startswith("--") or "_" in match.group(1)):
            spelled = "--" + match.group(1).replace("_", "-")
            if spelled in known:
                arg = spelled + (match.group(2) or "")
        out.append(arg)
    return out
