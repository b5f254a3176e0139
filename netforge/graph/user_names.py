"""Errors in the user's blob names: the Split layers the compiler inserts (a top read by
several layers feeds ``ip1_drop1_0_split_0``, ``..._split_1``, ...) are invisible in the
prototxt, so a message naming one is rewritten to name the blob the user wrote."""

from __future__ import annotations

import contextlib
import re

from netforge.errors import NetforgeError


def split_aliases(steps) -> dict[str, str]:
    """Split top name -> the blob it copies, for every Split layer among the plan's steps."""
    return {top: step.bottom_names[0] for step in steps
            if step.layer.type == "Split" and step.bottom_names for top in step.top_names}


def in_user_names(text: str, aliases: dict[str, str]) -> str:
    """``text`` with each quoted split blob name replaced by its user blob name."""
    if not aliases:
        return text
    return re.sub(r'"([^"]+)"', lambda m: f'"{aliases.get(m.group(1), m.group(1))}"', text)


@contextlib.contextmanager
def user_names(aliases: dict[str, str]):
    """Re-raise netforge errors raised inside with split blob names replaced."""
    try:
        yield
    except NetforgeError as exc:
        text = in_user_names(str(exc), aliases)
        if text == str(exc):
            raise
        raise type(exc)(text) from None
