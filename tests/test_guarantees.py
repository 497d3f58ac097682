"""What rtk promises about the user's files and its failures: nothing a user owns is overwritten,
nothing is left half-written, and every failure is one complete sentence with exit status 1
(64 for a bad flag value).

Every refusal here happens before any work, so these tests only read and compare bytes.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch

from helpers import PETS_PRE, PETS_SPEC, fails_cleanly, write_pets
from toolkit.core.errors import RtkError

SPEC, PRE = PETS_SPEC, PETS_PRE


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A checkpoint and a labelled image folder, shared read-only by the tests."""
    return write_pets(tmp_path_factory.mktemp("guarantees"))


def _snapshot(root):
    """Every file under ``root`` (links as their target) with its bytes."""
    return {p.relative_to(root): (os.readlink(p) if p.is_symlink() else p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def _link(work, name, target):
    link = work / name
    if not link.is_symlink():
        link.symlink_to(target)
    return link


# --- an output that is an input, or of the wrong format, is refused before any work ---------


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["predict", "imgs", "-m", "m.pth", "-o", "m.pth"], "refusing --output m.pth"),
        (["predict", "imgs", "-m", "m.pth", "-o", "out.png"], "whose files end in .txt"),
        (["predict", "imgs", "-m", "m.pth", "-f", "csv", "-o", "out.json"], "the csv format"),
        (["predict", "imgs", "-m", "m.pth", "-o", "model-link.csv"], "it is the input m.pth"),  # a symlink to the model
        (["predict", "imgs/cat/one.png", "-m", "m.pth", "--confusion-png", "imgs/cat/one.png"], "it is the input imgs/cat/one.png"),
        (["predict", "imgs", "-m", "m.pth", "--confusion-png", "imgs/dog/cm.png"], "lies in the image folder imgs"),
        (["export", "m.pth", "-o", "m.pth"], "refusing --output m.pth"),
        (["export", "m.pth", "-o", "x.txt"], "it would hold ONNX, whose files end in .onnx, not .txt"),
        (["export", "m.pth", "-o", "onnx-link.onnx"], "it is the input m.pth"),
        (["eval", "m.pth", "--data", "digits", "--confusion", "m.pth"], "refusing --confusion m.pth"),
        (["eval", "m.pth", "--data", "imgs", "--confusion", "imgs/cat/cm.png"], "lies in the image folder imgs"),
        (["parity", "m.pth", "--engines", "eager", "--json", "m.pth"], "refusing --json m.pth"),
        (["parity", "m.pth", "--engines", "eager", "--json", "json-link.json"], "it is the input m.pth"),
        (["build", "m.onnx", "-o", "m.onnx"], "refusing --output m.onnx"),
        (["build", "m.onnx", "--timing-cache", "m.onnx"], "refusing --timing-cache m.onnx: it is the input m.onnx"),
        (["bench", "m.engine", "--out", ".", "--name", "m.engine"], "it is the input m.engine.json"),
        (["train", "--data", "imgs", "--out", "imgs"], "lies in the image folder imgs"),
        (["train", "--pretrained", "run/best.pth", "--out", "run"], "it is the input run/best.pth"),
        (["train", "--out", "m.pth"], "--out m.pth is a file"),
    ],
)
def test_an_output_that_would_destroy_an_input_is_refused_and_every_byte_stays(work, cli, monkeypatch, args, phrase):
    monkeypatch.chdir(work)
    for name in ("model-link.csv", "onnx-link.onnx", "json-link.json"):
        _link(work, name, "m.pth")
    (work / "m.onnx").write_bytes(b"an onnx file that must survive")  # never read: the guard comes first
    (work / "m.engine").write_bytes(b"an engine")
    (work / "m.engine.json").write_text('{"a": "sidecar"}')
    (work / "run").mkdir(exist_ok=True)
    (work / "run" / "best.pth").write_bytes((work / "m.pth").read_bytes())
    before = _snapshot(work)
    fails_cleanly(cli(*args), phrase)
    assert _snapshot(work) == before  # nothing changed, nothing added, not even a temporary file


def test_a_device_is_never_replaced_by_a_renamed_file(tmp_path):
    from toolkit.core.errors import RtkError
    from toolkit.core.outputs import write_atomic

    pipe = tmp_path / "report.json"
    os.mkfifo(pipe)
    with pytest.raises(RtkError, match="it is a named pipe, not a file"):
        write_atomic(pipe, "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and not pipe.is_file()


def test_hard_links_count_as_the_same_file(work, cli, tmp_path):
    twin = tmp_path / "twin.onnx"
    os.link(work / "m.pth", twin)
    before = twin.read_bytes()
    fails_cleanly(cli("export", work / "m.pth", "-o", twin), "it is the input")
    assert twin.read_bytes() == before


# --- operating-system errors: one sentence with the path and the reason, no partial file ------


def _failing_fsync(monkeypatch, code):
    # The write itself lands in the page cache; the file system reports the failure when the data
    # is flushed, as a full disk or an exhausted quota does.
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_is_one_sentence_and_leaves_no_file(work, cli, tmp_path, monkeypatch):
    _failing_fsync(monkeypatch, errno.ENOSPC)
    out = tmp_path / "out.json"
    result = cli("predict", work / "imgs", "-m", work / "m.pth", "-o", out, "--workers", "0")
    fails_cleanly(result, f"cannot write {out}: no space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES])
def test_every_write_turns_os_errors_into_the_path_and_the_reason(tmp_path, monkeypatch, code):
    from toolkit.core.checkpoint import atomic_torch_save
    from toolkit.core.errors import RtkError
    from toolkit.core.outputs import write_atomic

    (tmp_path / "kept.json").write_text("old")
    _failing_fsync(monkeypatch, code)
    reason = os.strerror(code)
    for write, name in ((lambda p: write_atomic(p, "new"), "kept.json"), (lambda p: atomic_torch_save({"a": 1}, p), "m.pth")):
        with pytest.raises(RtkError, match=f"^cannot write {tmp_path / name}: {reason[0].lower()}{reason[1:]}$"):
            write(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.json"] and (tmp_path / "kept.json").read_text() == "old"


def test_a_full_device_is_one_sentence(work, cli):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    result = cli("predict", work / "imgs", "-m", work / "m.pth", "-o", "/dev/full", "--workers", "0")
    fails_cleanly(result, "cannot write /dev/full: no space left on device")


def test_a_folder_the_system_will_not_write_is_one_sentence(work, cli):
    import tempfile

    target = "/sys"  # sysfs refuses new files even to root
    try:
        fd, name = tempfile.mkstemp(dir=target)
    except OSError as exc:
        reason = os.strerror(exc.errno)
    else:
        os.close(fd)
        os.unlink(name)
        pytest.skip(f"{target} is writable here; no unwritable folder to try")
    fails_cleanly(cli("predict", work / "imgs", "-m", work / "m.pth", "--workers", "0", "-o", f"{target}/report.json"),
             f"cannot write {target}/report.json: {reason[0].lower()}{reason[1:]}")


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{work}/imgs", "-m", "{work}/m.pth", "-o", "{long}.json"],
        ["export", "{work}/m.pth", "-o", "{long}.onnx"],
        ["predict", "{long}.png", "-m", "{work}/m.pth"],
        ["predict", "{work}/imgs", "-m", "{long}.pth"],
        ["inspect", "{long}.pth"],
    ],
)
def test_a_name_too_long_is_one_sentence(work, cli, tmp_path, args):
    long = str(tmp_path / ("n" * 300))
    before = _snapshot(work)
    fails_cleanly(cli(*(a.format(work=work, long=long) for a in args)), "file name too long")
    assert list(tmp_path.iterdir()) == [] and _snapshot(work) == before


# --- wrong status ------------------------------------------------------------------------------


def test_bench_exits_1_when_no_engine_ran_and_still_lists_each(cli, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    result = cli("bench", text, "-e", "eager,ort", "--duration", "0.1", "--warmup", "0")
    fails_cleanly(result, "no engine produced a result")
    assert result.stdout.count("skipped") >= 2 and "holds text" in result.stdout


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-0.1"), ("--lr", "0"), ("--weight-decay", "inf"), ("--val-split", "nan")])
def test_train_refuses_a_non_finite_or_non_positive_number_as_a_usage_error(cli, tmp_path, flag, value):
    result = cli("train", flag, value, "--out", tmp_path / "run")
    fails_cleanly(result, flag, status=64)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--atol", "--min-cosine"])
def test_parity_refuses_a_nan_tolerance(work, cli, flag):
    fails_cleanly(cli("parity", work / "m.pth", flag, "nan"), f"{flag} must be a finite number, got nan", status=64)


def test_weights_holding_nan_are_named_up_front(work, cli, tmp_path):
    obj = torch.load(work / "m.pth", weights_only=True)
    obj["state_dict"]["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pth"
    torch.save(obj, bad)
    for args in (["export", bad], ["parity", bad, "-e", "eager"], ["predict", work / "imgs", "-m", bad]):
        fails_cleanly(cli(*args), "hold NaN/Inf in layer2.0.conv1.weight")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.pth"]


@pytest.mark.slow
def test_a_diverging_run_stops_before_an_epoch_is_called_best(cli, tmp_path):
    # One step per epoch at an absurd learning rate: the step's loss is finite, the weights after it are not.
    out = tmp_path / "run"
    result = cli(
        "train", "--max-samples", "2", "--batch-size", "2", "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0",
        "--input-size", "8", "--optimizer", "sgd", "--out", out, "--no-progress", "--device", "cpu",
    )
    fails_cleanly(result, "loss became")
    assert not (out / "best.pth").exists() and not (out / "last.pth").exists()


# --- messages: complete sentences, and what the file really is ---------------------------------


def test_a_truncated_checkpoint_is_a_complete_sentence(work, cli, tmp_path):
    data = (work / "m.pth").read_bytes()
    for size in (1000, len(data) // 2):
        cut = tmp_path / "cut.pth"
        cut.write_bytes(data[:size])
        result = cli("inspect", cut)
        fails_cleanly(result, "is truncated or corrupt")
        assert result.stderr.rstrip().endswith(")") and "high likelihood" not in result.stderr


def test_a_text_file_named_pth_says_so(cli, tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello world, no weights here\n")
    fails_cleanly(cli("inspect", path), "not a PyTorch checkpoint (it holds text)")


def test_pipes_and_devices_named_like_inputs_are_not_regular_files(work, cli, tmp_path):
    pipe = tmp_path / "pipe.pth"
    os.mkfifo(pipe)
    fails_cleanly(cli("inspect", pipe), "is a named pipe, not a checkpoint file")  # would block forever if opened
    folder = tmp_path / "imgs"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    result = cli("predict", folder, "-m", work / "m.pth", "--workers", "0")
    fails_cleanly(result, "not a regular file (a named pipe)", "not a regular file (a character device)")


def test_first_line_never_cuts_a_sentence():
    from toolkit.core.errors import first_line, first_sentence

    text = "PytorchStreamReader failed reading zip archive: failed finding central directory. " + "More advice follows here. " * 20
    line = first_line(text, 120)
    assert len(line) <= 120 and line.endswith(("directory.", "here.")) and line.startswith("PytorchStreamReader")
    assert first_sentence(text) == "PytorchStreamReader failed reading zip archive: failed finding central directory"
    cut = first_line("word " * 100, 50)
    assert cut.endswith("word…") and len(cut) <= 50


def test_an_image_above_pillows_bomb_limit_is_one_line(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from toolkit.core.errors import RtkError
    from toolkit.core.images import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (12, 12)).save(tmp_path / "big.png")  # 144 pixels: above the limit, below twice it
    Image.new("RGB", (16, 16)).save(tmp_path / "huge.png")  # 256: Pillow refuses
    assert load_image(tmp_path / "big.png").size == (12, 12)
    err = capsys.readouterr().err
    assert "big.png: 12×12 = 144 pixels" in err and "decompression-bomb limit of 100" in err and "DecompressionBombWarning" not in err
    with pytest.raises(RtkError, match="more than 200 pixels"):
        load_image(tmp_path / "huge.png")


def test_triton_names_the_foreign_sibling_onnx_and_leaves_it(work, cli, tmp_path):
    model = tmp_path / "x.pth"
    model.write_bytes((work / "m.pth").read_bytes())
    sibling = tmp_path / "x.onnx"
    sibling.write_bytes(b"someone else's file")
    fails_cleanly(cli("triton", model, "--repo", tmp_path / "repo"), "x.onnx exists but was not exported by rtk", "pass x.onnx itself in place of x.pth")
    assert sibling.read_bytes() == b"someone else's file" and not (tmp_path / "repo").exists()


def test_demo_never_clears_a_folder_it_did_not_write(cli, tmp_path):
    mine = tmp_path / "project" / "train" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("a month of work")
    fails_cleanly(cli("demo", "--out", tmp_path / "project", "--epochs", "1"), "was not written by rtk demo")
    assert mine.read_text() == "a month of work" and sorted(p.name for p in (tmp_path / "project").iterdir()) == ["train"]


@pytest.mark.slow
def test_a_full_disk_during_export_leaves_no_onnx(work, cli, tmp_path, monkeypatch):
    _failing_fsync(monkeypatch, errno.ENOSPC)
    out = tmp_path / "full" / "x.onnx"
    fails_cleanly(cli("export", work / "m.pth", "-o", out, "--no-check"), f"cannot write {out}: no space left on device")
    assert list((tmp_path / "full").iterdir()) == []


def test_a_named_pipe_named_like_an_onnx_file_is_refused_without_blocking(tmp_path):
    # Reading a FIFO would wait forever for a writer; the ONNX reader refuses it as the
    # checkpoint and image readers do.
    from toolkit.core.onnx_graph import load_onnx_graph

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(RtkError, match="is a named pipe, not an ONNX file"):
        load_onnx_graph(fifo)
