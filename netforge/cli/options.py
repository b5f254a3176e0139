"""What the command modules share: common flags, device selection and progress callbacks.

Kept apart from ``cli/main.py`` (the group) so that a command module imports these without
importing the group that registers it.
"""

from __future__ import annotations

import sys

import click

from netforge.errors import ConfigError, DeviceError


def gpu_option(help: str = "-1 for CPU or a device id."):
    """``--gpu``: -1 for the CPU, else a device id (see ``select_device``)."""
    return click.option("--gpu", default=None, help=help)


def netstate_options(func):
    """``--level`` and ``--stage``: the NetState that picks a net's layers."""
    func = click.option("--stage", default="", help="Comma-separated NetState stages.")(func)
    return click.option("--level", type=int, default=0, show_default=True,
                        help="NetState level.")(func)


def split_stages(stage: str) -> list[str]:
    """``--stage a,b`` as a list, empty items dropped."""
    return [s for s in stage.split(",") if s]


def select_device(gpu: str | None, solver_param=None) -> None:
    """--gpu -1 = CPU, an id = that GPU; unset: the solver's explicit solver_mode decides."""
    from netforge import backend

    if gpu is None and solver_param is not None and solver_param.HasField("solver_mode") and (
        solver_param.solver_mode == solver_param.GPU
    ):
        gpu = str(solver_param.device_id)
    if gpu is None or gpu.strip() == "-1":
        backend.set_mode_cpu()
        return
    if gpu == "all" or "," in gpu:
        raise DeviceError("multi-GPU training (--gpu all or a list) is not supported yet; "
                          "give one device id")
    try:
        device = int(gpu)
    except ValueError:
        raise ConfigError(f'--gpu must be -1, a device id or "all", got "{gpu}"') from None
    backend.set_device(device)
    backend.set_mode_gpu()


def rate_progress(label: str, unit: str, every_s: float = 10.0):
    """A callback(done, total) showing progress with a rate in ``unit``/s: a bar on a
    terminal, else a plain line every ``every_s`` seconds (and at the end)."""
    import time

    # The clock starts now (just before the work), not at the first callback, which may
    # come only after a whole block of images.
    state = {"bar": None, "done": 0, "start": time.perf_counter(), "last": time.perf_counter()}

    def rate() -> str:
        elapsed = time.perf_counter() - state["start"]
        return f"{state['done'] / elapsed:.0f} {unit}/s" if elapsed > 0 else ""

    def update(done, total):
        now = time.perf_counter()
        if sys.stderr.isatty():
            if state["bar"] is None:
                state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr,
                                                 show_pos=True, item_show_func=lambda _: rate())
                state["bar"].__enter__()
            state["bar"].update(done - state["done"], current_item=done)
            state["done"] = done
            if done >= total:
                state["bar"].__exit__(None, None, None)
            return
        state["done"] = done
        if done >= total or now - state["last"] >= every_s:
            state["last"] = now
            click.echo(f"{label}: {done}/{total} {unit} ({rate()})", err=True)

    return update


def bar_callback(label: str):
    """A callback(done, total) that draws a bar on a terminal (created on the first call)."""
    if not sys.stderr.isatty():
        return None
    state = {"bar": None, "done": 0}

    def update(done, total):
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(done - state["done"])
        state["done"] = done
        if done >= total:
            state["bar"].__exit__(None, None, None)

    return update
