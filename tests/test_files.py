"""Atomic writes: readers never see half a file, failures keep the old one, modes follow the umask."""

import os
import stat

import pytest

from helpers import make_checkpoint
from toolkit.core.errors import RtkError
from toolkit.core.outputs import staged, write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_atomic_gives_plain_open_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "sub" / "report.json", '{"a": 1}\n')
        assert path.read_text() == '{"a": 1}\n'
        assert _mode(path) == 0o644  # not mkstemp's 0600: a serving process under another user reads it
        os.umask(0o077)
        assert _mode(write_atomic(tmp_path / "private.bin", b"\x00\x01")) == 0o600
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):
        with staged(path) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("interrupted")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_folder_in_the_way_is_one_clear_error(tmp_path):
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(RtkError, match="it is a folder"):
        write_atomic(tmp_path / "out.csv", "x")


def test_checkpoints_and_plots_are_readable_by_others(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.core.plots import save_figure

    old = os.umask(0o022)
    try:
        png = save_figure(plt.figure(), tmp_path / "curve.png")
        assert png.read_bytes()[:4] == b"\x89PNG" and _mode(png) == 0o644
        assert _mode(make_checkpoint(tmp_path / "m.pth")) == 0o644
    finally:
        os.umask(old)
