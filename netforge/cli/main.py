"""The ``netforge`` command line (click). Flags in, library calls out; no logic here.

This module holds the group ``main`` (the console entry point ``netforge.cli:main``): global
flags (``--debug``, ``--quiet``, ``--version``), logging, and the error handling every
command shares: bad input ends with one line ``netforge: error: ...`` and exit code 2; a
failed run with 1. ``--debug`` or ``NETFORGE_DEBUG=1`` shows the traceback instead.

The commands live one module per group (``data_commands``, ``train_commands``,
``deploy_commands``, ``inspect_commands``; shared flags and helpers in ``options``) and are
registered at the end of this file, one ``main.add_command(...)`` line each. A new command
goes in a new module ``netforge/cli/<name>.py`` plus one line there.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from netforge.cli import (
    compress,
    data_commands,
    deploy_commands,
    extract_features,
    inspect_commands,
    serve,
    train_commands,
    upgrade,
)
from netforge.errors import NetforgeError
from netforge.version import __version__

_DEBUG = {"on": os.environ.get("NETFORGE_DEBUG", "") not in ("", "0")}
# Commands whose output is the product: their log (net construction ...) only with -v.
RESULT_COMMANDS = {"predict", "freeze", "test", "summary"}


class NetforgeGroup(click.Group):
    """A click group whose ``main`` maps every error to one line and an exit code."""

    def main(self, args=None, prog_name="netforge", **extra) -> None:
        from netforge.cli import gflags

        args = gflags.translate(sys.argv[1:] if args is None else list(args), self)
        try:
            super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `netforge`: the help
            exc.show()
            sys.exit(2)
        except click.ClickException as exc:  # bad flags, missing files: the same one line
            click.echo(f"netforge: error: {_click_message(exc)}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("netforge: interrupted", err=True)
            sys.exit(1)
        except NetforgeError as exc:
            if _DEBUG["on"]:
                traceback.print_exc()
            click.echo(f"netforge: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("netforge: interrupted", err=True)
            sys.exit(1)
        except MemoryError as exc:  # wherever it struck: one line, as any failed run
            if _DEBUG["on"]:
                traceback.print_exc()
            detail = f" ({exc})" if str(exc) else ""
            click.echo(f"netforge: error: out of memory{detail}; make the batch or the input "
                       "smaller", err=True)
            sys.exit(1)


def _click_message(exc: click.ClickException) -> str:
    """Click's message, with a pointer to the command's --help for a usage error."""
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


@click.group(cls=NetforgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netforge")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors in the log.")
@click.option("--verbose", "-v", is_flag=True,
              help="The full log, net construction included, for predict, freeze, test and "
                   "summary too (quiet by default: their output is the result).")
@click.option("--allow-python-layers", is_flag=True,
              help="Let Python layers import the modules their nets name (off: loading a "
                   "net or model never runs code).")
def main(debug: bool, quiet: bool, verbose: bool, allow_python_layers: bool) -> None:
    """Caffe-compatible nets and solvers, trained from the command line."""
    from netforge.cli import logs

    command = click.get_current_context().invoked_subcommand
    quiet = quiet or (command in RESULT_COMMANDS and not verbose)
    if allow_python_layers:
        from netforge.layers.python_layer import allow_python_layers as allow

        allow(True)
    _DEBUG["on"] = _DEBUG["on"] or debug
    logs.configure(logging.WARNING if quiet else logging.INFO)


# -- the commands: one main.add_command(...) line each ------------------------------------
main.add_command(data_commands.convert)
main.add_command(data_commands.mean)
main.add_command(train_commands.train)
main.add_command(train_commands.test)
main.add_command(deploy_commands.freeze)
main.add_command(deploy_commands.predict)
main.add_command(deploy_commands.export_onnx)
main.add_command(inspect_commands.summary)
main.add_command(inspect_commands.time_command)
main.add_command(inspect_commands.draw)
main.add_command(inspect_commands.plot)
main.add_command(serve.serve)
main.add_command(compress.compress)
main.add_command(extract_features.extract_features)
main.add_command(upgrade.upgrade)

if __name__ == "__main__":  # pragma: no cover
    main()
