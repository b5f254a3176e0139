"""``netforge plot``: training curves from metrics files or Caffe-format training logs.

Three panels against iterations: train loss (and test losses), the other test outputs
(accuracy ...), and the learning rate. Several inputs are overlaid, labelled by file name, so
two runs can be compared. matplotlib is an optional dependency (``pip install netforge[plot]``).
"""

from __future__ import annotations

import re
from pathlib import Path

from netforge.errors import ConfigError, DataError
from netforge.files import atomic_path

_ITERATION = re.compile(r"Iteration (\d+)")
_LR = re.compile(r"Iteration \d+, lr = ([-+0-9.eE]+|nan|inf)")
_LOSS = re.compile(r"Iteration \d+ .*loss = ([-+0-9.eE]+|nan|inf)")
_OUTPUT = re.compile(r"(Train|Test) net output #\d+: (\S+) = ([-+0-9.eE]+|nan|inf)")
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")


def read_log(path: Path) -> list[dict]:
    """Records in the metrics-file form from a log in Caffe's line formats."""
    records: list[dict] = []
    train: dict | None = None
    test: dict | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if (match := _TESTING.search(line)):
            test = {"phase": "test", "iteration": int(match.group(1)),
                    "net": int(match.group(2)), "outputs": {}}
            records.append(test)
            continue
        if (match := _LOSS.search(line)):
            iteration = int(_ITERATION.search(line).group(1))
            train = {"phase": "train", "iteration": iteration, "loss": float(match.group(1)),
                     "outputs": {}}
            records.append(train)
            continue
        if (match := _LR.search(line)) and train is not None:
            train["lr"] = float(match.group(1))
            continue
        if (match := _OUTPUT.search(line)):
            target = train if match.group(1) == "Train" else test
            if target is not None:
                target["outputs"][match.group(2)] = float(match.group(3))
    return records


def read_records(path) -> list[dict]:
    """A metrics file (JSON lines) or a training log, recognised by content."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such metrics file or log")
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().lstrip()
    if first.startswith("{"):
        from netforge.train.metrics import read_metrics

        return read_metrics(path)
    records = read_log(path)
    if not records:
        raise DataError(f"{path}: no training iterations found (not a netforge/Caffe log?)")
    return records


def _series(records, phase, key, output=None, net=None):
    points = []
    for r in records:
        if r.get("phase") != phase or (net is not None and r.get("net", 0) != net):
            continue
        value = r.get("outputs", {}).get(output) if output else r.get(key)
        if isinstance(value, (int, float, str)):
            try:
                points.append((r["iteration"], float(value)))
            except ValueError:
                continue
    return points


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("netforge plot needs matplotlib: pip install 'netforge[plot]'") from None
    return plt


def plot_curves(inputs, output) -> Path:
    """Draw the curves of ``inputs`` into the image ``output`` (its suffix picks the format)."""
    plt = _pyplot()
    output = Path(output)
    image_format = output.suffix.lstrip(".").lower()
    supported = sorted(plt.figure().canvas.get_supported_filetypes())
    plt.close("all")
    if image_format not in supported:
        raise ConfigError(f"{output}: cannot write a .{image_format or '(no suffix)'} image; "
                          f"give --output one of {', '.join('.' + s for s in supported)}")
    figure = draw_curves(inputs)
    try:
        with atomic_path(output) as tmp:
            figure.savefig(tmp, dpi=100, format=image_format)
    finally:
        plt.close(figure)
    return output


def draw_curves(inputs):
    """The matplotlib figure of the loss, test output and lr curves of ``inputs``."""
    plt = _pyplot()
    figure, (loss_ax, test_ax, lr_ax) = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    drawn = 0
    for path in inputs:
        records = read_records(path)
        tag = Path(path).name
        for x_y, axis, label in _curves(records, tag, loss_ax, test_ax, lr_ax):
            if x_y:
                xs, ys = zip(*x_y, strict=True)
                axis.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None)
                drawn += 1
    if not drawn:
        plt.close(figure)
        raise DataError("nothing to plot: the inputs hold no loss, test output or lr values")
    loss_ax.set_ylabel("loss")
    if _all_positive(loss_ax):
        loss_ax.set_yscale("log")
    test_ax.set_ylabel("test outputs")
    lr_ax.set_ylabel("learning rate")
    if _spans_decades(lr_ax):  # step/multistep/inv schedules: each drop visible
        lr_ax.set_yscale("log")
    lr_ax.set_xlabel("iteration")
    for axis in (loss_ax, test_ax, lr_ax):
        axis.grid(True, alpha=0.3)
        if axis.lines:
            axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _spans_decades(axis) -> bool:
    """All values positive and the largest at least ten times the smallest."""
    if not _all_positive(axis):
        return False
    values = [v for line in axis.lines for v in line.get_ydata()]
    return max(values) >= 10 * min(values)


def _curves(records, tag, loss_ax, test_ax, lr_ax):
    yield _series(records, "train", "loss"), loss_ax, f"{tag}: train loss"
    nets = sorted({r.get("net", 0) for r in records if r.get("phase") == "test"})
    for net in nets:
        names = []
        for r in records:
            if r.get("phase") == "test" and r.get("net", 0) == net:
                names.extend(n for n in r.get("outputs", {}) if n not in names)
        for name in names:
            axis = loss_ax if "loss" in name else test_ax
            yield (_series(records, "test", None, output=name, net=net), axis,
                   f"{tag}: test #{net} {name}")
    yield _series(records, "train", "lr"), lr_ax, f"{tag}: lr"


def _all_positive(axis) -> bool:
    return all(min(line.get_ydata()) > 0 for line in axis.lines) if axis.lines else False

