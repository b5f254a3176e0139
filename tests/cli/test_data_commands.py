"""`netforge convert` and `netforge mean` in-process: output lines, exit codes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netforge.cli.main import main
from netforge.data.records import load_mean_file


def run(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).save(
                tmp_path / "src" / name / f"{i}.png")
    (tmp_path / "src" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return tmp_path


def test_convert_then_mean(capsys, folders):
    code, out, err = run(capsys, "convert", str(folders / "src"), str(folders / "db"),
                         "--encode-type", "jpg", "--seed", "3")
    assert code == 0, err
    assert "wrote 6 images" in out and "images/s" in out
    assert "skipped 1 unreadable image(s)" in out and "b/broken.jpg" in out
    assert "converting: 7/7 images" in err  # plain progress lines when not a terminal

    code, out, err = run(capsys, "mean", str(folders / "db"), str(folders / "mean.binaryproto"))
    assert code == 0, err
    mean = load_mean_file(folders / "mean.binaryproto")
    assert mean.shape == (3, 4, 6)
    lines = [line for line in out.splitlines() if line.startswith("mean_value channel")]
    assert len(lines) == 3
    for c, line in enumerate(lines):
        assert float(line.split(":")[1]) == pytest.approx(float(mean[c].mean()), abs=1e-3)


def one_error(code, err) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netforge: error: "), err
    return lines[0]


def test_errors_are_one_line_with_exit_code_2(capsys, folders):
    (folders / "db").mkdir()
    line = one_error(*run(capsys, "convert", str(folders / "src"), str(folders / "db"))[::2])
    assert "already exists" in line and "--overwrite" in line

    (folders / "list.txt").write_text("a/0.png 0\na/1.png\n")
    line = one_error(*run(capsys, "convert", str(folders / "src"), str(folders / "out"),
                          "--list", str(folders / "list.txt"))[::2])
    assert "list.txt:2:" in line

    line = one_error(*run(capsys, "mean", str(folders / "db"), str(folders / "m.bp"))[::2])
    assert "neither an LMDB" in line
    (folders / "db" / "data.mdb").write_bytes(b"garbage" * 50)
    line = one_error(*run(capsys, "mean", str(folders / "db"), str(folders / "m.bp"))[::2])
    assert "damaged" in line
    assert not (folders / "m.bp").exists()
