"""Where a field sits in a protobuf text file: ``locate(text, [("layer", 3), ("num_output", 0)])``.

Protobuf's parser forgets positions once a message is built, so errors found after parsing
(the validation pass) re-scan the text with this small tokenizer. It understands what the
text format needs for positions — names, ``{ }``/``< >`` nesting, strings, comments, lists —
and is only asked after something already went wrong, so it costs nothing on good files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r]+)|(?P<newline>\n)|(?P<comment>\#[^\n]*)
      |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      |(?P<open>[{<])|(?P<close>[}>])|(?P<punct>[:\[\],;])
      |(?P<word>[^\s{}<>:\[\],;"'\#]+)""",
    re.VERBOSE,
)


@dataclass
class Node:
    """One field occurrence: its name, 1-based line and column, and (for messages) children."""

    name: str
    line: int
    column: int
    children: list[Node] = field(default_factory=list)

    def nth(self, name: str, index: int) -> Node | None:
        """The ``index``-th child called ``name`` (a repeated field's element, counting
        list syntax ``name: [a, b]`` as one occurrence per element)."""
        seen = 0
        for child in self.children:
            if child.name == name:
                if seen == index:
                    return child
                seen += 1
        return None


def parse_positions(text: str) -> Node:
    """The tree of field occurrences of ``text``; never raises (a damaged tail is dropped)."""
    root = Node("", 1, 1)
    stack = [root]
    line, line_start = 1, 0
    pending: Node | None = None  # a name seen, waiting for its value or block
    in_list = False
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group()
        column = match.start() - line_start + 1
        if kind == "newline":
            line, line_start = line + 1, match.end()
        elif kind == "open":
            node = pending or Node("", line, column)
            stack.append(node)
            pending = None
        elif kind == "close":
            if len(stack) > 1:
                stack.pop()
            pending = None
        elif kind == "punct":
            if value == "[":
                in_list = True
            elif value == "]":
                in_list, pending = False, None
            elif value == "," and in_list and stack[-1].children:
                last = stack[-1].children[-1]  # each list element counts as an occurrence
                stack[-1].children.append(Node(last.name, line, column))
        elif kind in ("word", "string"):
            if pending is None and not in_list and kind == "word":
                pending = Node(value, line, column)
                stack[-1].children.append(pending)
            else:
                pending = None  # the value of a scalar field
    return root


def locate(text: str, path) -> tuple[int, int] | None:
    """(line, column) of the deepest element of ``path`` (``[(field, index), ...]``) found in
    ``text``: the field itself if present, else the closest enclosing message."""
    node = parse_positions(text)
    found = None
    for name, index in path:
        node = node.nth(name, index)
        if node is None:
            break
        found = (node.line, node.column)
    return found
