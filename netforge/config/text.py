"""Reading protobuf files, text and binary, with errors that point at the file.

``lenet.prototxt:12:5: unknown field "kernal_size" in ConvolutionParameter``.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from netforge.errors import ConfigError, DataError

_NO_FIELD = re.compile(r'Message type "(?:\w+\.)*(\w+)" has no field named "([^"]+)"')
_LOCATION = re.compile(r"^(\d+):(\d+)\s*:\s*")


def _explain_parse_error(message: str) -> str:
    """Protobuf's text-format complaint rewritten in netforge's words."""
    match = _NO_FIELD.search(message)
    if match:
        return f'unknown field "{match.group(2)}" in {match.group(1)}'
    return message.rstrip(".")


def parse_text(text: str, message, source: str = "<string>"):
    """Parse protobuf text ``text`` into ``message``; errors cite ``source:line:col``."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raw = str(exc)
        line, col = exc.GetLine(), exc.GetColumn()
        raw = _LOCATION.sub("", raw)
        where = f"{source}:{line}:{col}" if line is not None else source
        raise ConfigError(f"{where}: {_explain_parse_error(raw)}") from None
    return message


def read_text(path, message):
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: a binary file, not a protobuf text file (a .caffemodel "
                          "or .solverstate? those go in --weights / --snapshot)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read as text ({exc.strerror or exc})") from None
    return parse_text(text, message, str(path))


def read_binary(path, message, what: str = "file"):
    """Parse a binary protobuf (``.caffemodel``, ``.binaryproto``, ``.solverstate``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: damaged or truncated {what} ({exc})") from None
    return message
