"""``netforge plot``: the lr axis turns logarithmic when the rate spans decades; an image
suffix matplotlib cannot write is refused before any work, in one line."""

from __future__ import annotations

import json

import pytest

from netforge.errors import ConfigError

pytest.importorskip("matplotlib")


def _metrics(tmp_path, lrs):
    path = tmp_path / "m_metrics.jsonl"
    path.write_text("".join(json.dumps({"phase": "train", "iteration": 10 * i, "lr": lr,
                                        "loss": 1.0 / (i + 1), "seconds": i}) + "\n"
                            for i, lr in enumerate(lrs)))
    return path


@pytest.mark.parametrize("lrs, scale", [([0.1, 0.1, 0.01, 0.001], "log"),
                                        ([0.01, 0.009, 0.008], "linear")])
def test_lr_axis_is_logarithmic_when_lr_spans_decades(tmp_path, lrs, scale):
    from matplotlib import pyplot as plt

    from netforge.inspect.plot import draw_curves

    figure = draw_curves([_metrics(tmp_path, lrs)])
    lr_axis = figure.axes[2]
    assert lr_axis.get_ylabel() == "learning rate"
    assert lr_axis.get_yscale() == scale
    plt.close(figure)


def test_unsupported_image_suffix_is_one_clear_error(tmp_path):
    from netforge.inspect.plot import plot_curves

    with pytest.raises(ConfigError, match=r"cannot write a \.bmpx image; give --output one of "
                                          r".*\.png"):
        plot_curves([_metrics(tmp_path, [0.1])], tmp_path / "curves.bmpx")
    assert not (tmp_path / "curves.bmpx").exists()
    out = plot_curves([_metrics(tmp_path, [0.1])], tmp_path / "curves.svg")
    assert out.read_text().lstrip().startswith("<?xml")
