"""The click group in netforge/cli/main.py: every command module is registered, and the
group maps errors to one line and an exit code, in process (the end-to-end runs are in
test_cli.py)."""

from __future__ import annotations

import sys

import click
import pytest

from netforge.cli.main import main
from netforge.errors import ConfigError, RunError

COMMANDS = {"convert", "mean", "train", "test", "freeze", "predict", "export-onnx", "summary",
            "time", "draw", "plot", "serve", "compress", "extract-features", "upgrade"}


def test_the_console_entry_point_is_the_group_with_every_command():
    import netforge.cli

    assert netforge.cli.main is main and isinstance(main, click.Group)
    assert set(main.commands) == COMMANDS


def _run_with(monkeypatch, capsys, command, *args):
    monkeypatch.setitem(main.commands, command.name, command)
    with pytest.raises(SystemExit) as stop:
        main(["-q", command.name, *args])
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("error", "code"), [(ConfigError("bad.prototxt:3: no field 'x'"), 2),
                                             (RunError("no image could be read"), 1)])
def test_a_library_error_is_one_line_and_its_exit_code(monkeypatch, capsys, error, code):
    @click.command(name="boom")
    def boom():
        raise error

    # (the package attribute netforge.cli.main is the group; the module is in sys.modules)
    monkeypatch.setitem(sys.modules["netforge.cli.main"]._DEBUG, "on", False)
    exit_code, err = _run_with(monkeypatch, capsys, boom)
    assert exit_code == code
    assert err == f"netforge: error: {error}\n"


def test_a_usage_error_is_one_line_pointing_at_help(monkeypatch, capsys):
    @click.command(name="needs")
    @click.option("--n", type=int, required=True)
    def needs(n):
        pass

    exit_code, err = _run_with(monkeypatch, capsys, needs, "--n", "x")
    assert exit_code == 2
    assert err.startswith("netforge: error: Invalid value for '--n'")
    assert err.rstrip().endswith("(see 'netforge needs --help')") and err.count("\n") == 1


def test_ctrl_c_is_interrupted_and_exit_1(monkeypatch, capsys):
    @click.command(name="stop")
    def stop():
        raise KeyboardInterrupt

    exit_code, err = _run_with(monkeypatch, capsys, stop)
    assert (exit_code, err.strip()) == (1, "netforge: interrupted")  # click adds a newline


def test_success_returns_normally(capsys):
    assert main(["-q", "--help"]) is None  # no SystemExit for the in-process callers
    assert "Commands:" in capsys.readouterr().out
