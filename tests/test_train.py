"""Training: outputs, fine-tuning with a frozen backbone, resume, determinism, Ctrl-C, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from toolkit.checkpoint import load_checkpoint, read_torch_file
from toolkit.data import write_digit_images
from toolkit.train import TrainOptions, train

# Tiny but real: 8×8 digits, 32 images per split, one epoch; seconds on a CPU.
TINY = TrainOptions(data="digits", input_size=8, max_samples=32, epochs=1, batch_size=32, device="cpu", progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny digits run shared by the tests that only read its outputs."""
    return train(replace(TINY, out=tmp_path_factory.mktemp("run")))


def _digit_folder(root, classes=("0", "1", "2"), per_class=4):
    """A real image folder: 8×8 digit PNGs under root/<digit>/ for the given classes."""
    write_digit_images(root, split="val", per_class=per_class, classes=classes)
    return root


def test_run_writes_checkpoints_history_and_curves(tiny_run):
    out = tiny_run.out
    assert {p.name for p in out.iterdir()} >= {"best.pth", "last.pth", "history.json", "curves.png"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1]
    assert history["test_acc"] == tiny_run.test_acc and 0.0 <= tiny_run.test_acc <= 1.0
    # Everything must stay loadable with weights_only=True (no pickled objects).
    raw = read_torch_file(out / "last.pth")
    assert "optimizer" in raw["train"] and raw["train"]["epoch"] == 1
    best = load_checkpoint(out / "best.pth")
    assert best.spec.arch == "resnet18" and best.spec.stem == "small" and best.spec.in_chans == 1
    assert best.spec.class_names == tuple("0123456789")
    assert best.preprocess.input_size == (8, 8) and best.preprocess.channels == "gray"
    assert "optimizer" not in best.train  # the deployable checkpoint stays small
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fine_tune_frozen_backbone_changes_only_the_head(tiny_run, tmp_path, capsys):
    data = _digit_folder(tmp_path / "three")
    result = train(
        replace(TINY, data=str(data), input_size=None, max_samples=None, pretrained=tiny_run.best, freeze="backbone", out=tmp_path / "ft")
    )
    before = load_checkpoint(tiny_run.best).state_dict
    after = load_checkpoint(result.best)
    assert after.spec.num_classes == 3 and after.spec.class_names == ("0", "1", "2")
    # The input size follows the pretrained checkpoint; channels follow its conv1 (gray).
    assert after.preprocess.input_size == (8, 8) and after.preprocess.channels == "gray"
    changed = {k for k in before if not k.startswith("fc.") and not torch.equal(before[k], after.state_dict[k])}
    assert changed == set()  # weights and BatchNorm statistics of the backbone are untouched
    assert tuple(after.state_dict["fc.weight"].shape) == (3, 512)
    assert result.trainable == 512 * 3 + 3 and result.total > 11_000_000
    err = capsys.readouterr().err
    assert "head replaced" in err and "trainable parameters: 1,539" in err


def test_fine_tune_with_mlp1024_head_keeps_the_backbones_channels(tiny_run, tmp_path):
    data = _digit_folder(tmp_path / "two", classes=("3", "4"))
    result = train(replace(TINY, data=str(data), input_size=8, max_samples=None, pretrained=tiny_run.best, head="mlp1024", out=tmp_path / "mlp"))
    ckpt = load_checkpoint(result.best)
    assert ckpt.spec.head == "mlp1024" and ckpt.spec.num_classes == 2 and ckpt.spec.in_chans == 1
    assert ckpt.preprocess.channels == "gray"
    assert result.trainable == result.total  # --freeze none


def test_resume_equals_an_uninterrupted_run_with_the_same_seed(tmp_path):
    # Constant schedule: a 1-epoch run resumed to 2 epochs must equal a straight 2-epoch run,
    # bit for bit; that needs both determinism under --seed and a complete resume.
    base = replace(TINY, schedule="constant", warmup_epochs=0, seed=3)
    straight = train(replace(base, epochs=2, out=tmp_path / "a"))
    train(replace(base, epochs=1, out=tmp_path / "b"))
    resumed = train(replace(base, epochs=2, out=tmp_path / "b", resume=True))
    a, b = (load_checkpoint(r.last).state_dict for r in (straight, resumed))
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)


def test_ctrl_c_leaves_a_usable_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "toolkit", "train", "--input-size", "8", "--max-samples", "32", "--batch-size", "16",
           "--epochs", "500", "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.pth").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert (out / "last.pth").exists(), proc.stderr.read() if proc.poll() is not None else "no epoch finished in time"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt.train["epoch"] >= 1 and "optimizer" in ckpt.train
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cli_train_prints_best_checkpoint(cli, tmp_path):
    result = cli("train", "--input-size", "8", "--max-samples", "32", "--epochs", "1", "--device", "cpu",
                 "--no-progress", "--out", tmp_path / "cli")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("best.pth")
    assert "test accuracy" in result.stderr and "trainable parameters" in result.stderr


def _fails(result, message):
    assert result.exit_code == 1, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_cli_bad_data(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    _fails(cli("train", "--data", tmp_path / "empty", "--out", tmp_path / "o"), "holds no class folders")
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    _fails(cli("train", "--data", tmp_path / "classes", "--out", tmp_path / "o"), "holds no readable images")
    _fails(cli("train", "--data", "cifar10", "--data-root", tmp_path / "none", "--out", tmp_path / "o"), "pass --download")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_corrupt_image_in_dataset_is_skipped(cli, tmp_path):
    data = _digit_folder(tmp_path / "ds", classes=("0", "1"), per_class=3)
    (data / "1" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    result = cli("train", "--data", data, "--input-size", "8", "--epochs", "1", "--device", "cpu", "--no-progress",
                 "--val-split", "0.34", "--out", tmp_path / "o")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipping" in result.stderr and "bad.jpg" in result.stderr
    assert (tmp_path / "o" / "best.pth").exists()


def test_cli_pretrained_of_another_architecture(cli, tiny_run, tmp_path):
    _fails(
        cli("train", "--arch", "resnet34", "--pretrained", tiny_run.best, "--out", tmp_path / "o"),
        "holds a resnet18, but --arch resnet34 was asked",
    )


def test_pretrained_that_does_not_fit_names_the_tensor(tiny_run, tmp_path):
    from toolkit.errors import RtkError

    # The digits backbone is 1-channel; forcing 3 input channels cannot reuse its conv1.
    with pytest.raises(RtkError, match=r"conv1.weight is \(64, 1, 3, 3\) there but \(64, 3, 3, 3\) here"):
        train(replace(TINY, pretrained=tiny_run.best, in_chans=3, out=tmp_path / "o"))


def test_cli_resume_errors(cli, tiny_run, tmp_path):
    _fails(cli("train", "--resume", "--out", tmp_path / "nothing"), "nothing to resume")
    _fails(cli("train", "--resume", "--epochs", "1", "--out", tiny_run.out),
           "already trained 1 epochs")  # fmt: skip
    _fails(cli("train", "--freeze", "backbone", "--out", tmp_path / "o"), "--freeze backbone needs --pretrained")
