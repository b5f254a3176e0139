"""The training curves as server-side SVG (no script, no chart library): train and test
losses, other test outputs (accuracy), and the learning rate, against the iteration."""

from __future__ import annotations

import math
from html import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def series_of(records: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{panel: {series name: [(iteration, value)]}} for the panels loss, outputs, lr."""
    panels: dict[str, dict[str, list]] = {"loss": {}, "outputs": {}, "lr": {}}
    for record in records:
        iteration = record.get("iteration", 0)
        if record.get("phase") == "train":
            for key, panel, name in (("loss", "loss", "train loss"), ("lr", "lr", "lr")):
                value = _number(record.get(key))
                if value is not None:
                    panels[panel].setdefault(name, []).append((iteration, value))
        elif record.get("phase") == "test":
            for name, raw in record.get("outputs", {}).items():
                value = _number(raw)
                if value is None:
                    continue
                panel = "loss" if "loss" in name.lower() else "outputs"
                panels[panel].setdefault(f"test {name}", []).append((iteration, value))
    return panels


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + (abs(low) or 1.0)
    step = 10 ** math.floor(math.log10((high - low) / count))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _labels(values: list[float]) -> list[str]:
    """Tick labels with just enough digits to tell neighbours apart (0.00985, 0.0099)."""
    if all(float(v).is_integer() and abs(v) < 1e7 for v in values):
        return [str(int(v)) for v in values]  # iterations: 0, 200, 400, never 2e+02
    for digits in range(2, 8):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{v:.8g}" for v in values]


def _label(value: float) -> str:
    return f"{value:.3g}"


def panel_svg(title: str, series: dict[str, list], top: int, width: int, height: int,
              x_max: float = 0.0) -> str:
    """One chart at vertical offset ``top``: axes, ticks, a polyline per series, a legend.
    The iteration axis runs from 0 to ``x_max`` (or the last iteration, if later)."""
    left, right, pad_top, pad_bottom = 60, 150, 24, 28
    plot_w, plot_h = width - left - right, height - pad_top - pad_bottom
    parts = [f'<g class="panel" data-panel="{escape(title)}" transform="translate(0,{top})">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{left}" y="{pad_top}" width="{plot_w}" height="{plot_h}" '
             'fill="#fff" stroke="#999"/>']
    points = [p for values in series.values() for p in values]
    if not points:
        parts.append(f'<text x="{left + 10}" y="{pad_top + plot_h / 2}" fill="#888">'
                     "no data yet</text></g>")
        return "".join(parts)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(0.0, min(xs)), max(max(xs), x_max) or 1.0
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - (abs(y0) * 0.1 or 0.5), y1 + (abs(y1) * 0.1 or 0.5)

    def sx(x):
        return left + (x - x0) / ((x1 - x0) or 1.0) * plot_w

    def sy(y):
        return pad_top + plot_h - (y - y0) / (y1 - y0) * plot_h

    y_ticks = _ticks(y0, y1)
    for tick, text in zip(y_ticks, _labels(y_ticks), strict=True):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(tick):.1f}" '
                     f'y2="{sy(tick):.1f}" stroke="#eee"/><text x="{left - 4}" '
                     f'y="{sy(tick) + 4:.1f}" font-size="10" text-anchor="end">{text}</text>')
    x_ticks = _ticks(x0, x1)
    for tick, text in zip(x_ticks, _labels(x_ticks), strict=True):
        parts.append(f'<text x="{sx(tick):.1f}" y="{pad_top + plot_h + 14}" font-size="10" '
                     f'text-anchor="middle">{text}</text>')
    for i, (name, values) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline class="series" data-name="{escape(name)}" '
                     f'data-count="{len(values)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5" points="{coords}"/>')
        if len(values) == 1:
            x, y = values[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>')
        ly = pad_top + 12 + 16 * i
        parts.append(f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 28}" y1="{ly - 4}" '
                     f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"/><text '
                     f'x="{left + plot_w + 32}" y="{ly}" font-size="11">{escape(name)} '
                     f"({_label(values[-1][1])})</text>")
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 2}" font-size="10" '
                 'text-anchor="middle">iteration</text></g>')
    return "".join(parts)


def chart_svg(records: list[dict], width: int = 760, panel_height: int = 200,
              max_iter: int = 0) -> str:
    """The three panels on one iteration axis (0 to ``max_iter``: the curves grow into it)."""
    panels = series_of(records)
    last = max((r.get("iteration", 0) for r in records), default=0)
    titles = (("loss", "Loss"), ("outputs", "Test outputs"), ("lr", "Learning rate"))
    body = "".join(panel_svg(title, panels[key], i * panel_height, width, panel_height,
                             max(max_iter, last))
                   for i, (key, title) in enumerate(titles))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
            f'height="{panel_height * len(titles)}" data-records="{len(records)}" '
            f'font-family="sans-serif">{body}</svg>')
