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

from helpers import fails_cleanly
from toolkit.core.checkpoint import load_checkpoint, read_torch_file
from toolkit.core.data import write_digit_images
from toolkit.core.models import create_model
from toolkit.core.schedule import lr_factor
from toolkit.core.spec import ModelSpec
from toolkit.usecases.train import TrainOptions, format_share, train

# Tiny but real: 8×8 digits, 32 images per split, one epoch; seconds on a CPU.
TINY = TrainOptions(data="digits", input_size=8, max_samples=32, epochs=1, batch_size=32, width=16, device="cpu", progress=False)


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
    assert tuple(after.state_dict["fc.weight"].shape) == (3, 128)  # resnet18 at width 16: 128 features
    assert result.trainable == 128 * 3 + 3 and result.total > 690_000
    err = capsys.readouterr().err
    assert "head replaced" in err and "trainable parameters: 387" in err
    assert f"({format_share(387, result.total)})" in err


def test_share_of_parameters_never_reads_zero_when_it_is_not():
    assert format_share(5_130, 11_181_642) == "0.046%"
    assert format_share(1, 11_181_642) == "0.0000089%"
    assert format_share(3, 4) == "75.0%" and format_share(7, 7) == "100.0%" and format_share(0, 7) == "0%"


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
    cmd = [sys.executable, "-m", "toolkit", "train", "--input-size", "8", "--max-samples", "32", "--batch-size", "16", "--width", "16",
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
    result = cli("train", "--input-size", "8", "--max-samples", "32", "--epochs", "1", "--device", "cpu", "--width", "16",
                 "--no-progress", "--out", tmp_path / "cli")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("best.pth") and "resnet18-w16" in result.stderr
    assert "test accuracy" in result.stderr and "trainable parameters" in result.stderr




def test_cli_bad_data(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    fails_cleanly(cli("train", "--data", tmp_path / "empty", "--out", tmp_path / "o"), "and no class folders")
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    fails_cleanly(cli("train", "--data", tmp_path / "classes", "--out", tmp_path / "o"), "no images in")
    fails_cleanly(cli("train", "--data", "cifar10", "--data-root", tmp_path / "none", "--out", tmp_path / "o"), "pass --download")
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
    fails_cleanly(
        cli("train", "--arch", "resnet34", "--pretrained", tiny_run.best, "--out", tmp_path / "o"),
        "holds a resnet18, but --arch resnet34 was asked",
    )


def test_cli_width_is_checked_and_must_match_a_pretrained_checkpoint(cli, tiny_run, tmp_path):
    fails_cleanly(cli("train", "--width", "24", "--out", tmp_path / "a"), "--width must be 16, 32, 48 or 64 (every published ResNet's), got 24", status=64)
    fails_cleanly(
        cli("train", "--width", "64", "--pretrained", tiny_run.best, "--out", tmp_path / "b"),
        "has width 16, but --width 64 was asked; drop --width to fine-tune it",
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_pretrained_that_does_not_fit_names_the_tensor(tiny_run, tmp_path):
    from toolkit.core.errors import RtkError

    # The digits backbone is 1-channel; forcing 3 input channels cannot reuse its conv1.
    with pytest.raises(RtkError, match=r"conv1.weight is \(16, 1, 3, 3\) there but \(16, 3, 3, 3\) here"):
        train(replace(TINY, pretrained=tiny_run.best, in_chans=3, out=tmp_path / "o"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "1"], "--batch-size must be at least 2, got 1: BatchNorm"),
        (["--max-samples", "1"], "--max-samples must be at least 2, got 1"),
        (["--workers", "-1"], "--workers must be at least 0, got -1"),
        (["--weight-decay", "-1"], "--weight-decay must be at least 0, got -1.0"),
        (["--seed", "-1"], "--seed must be at least 0 and at most 4294967295, got -1"),
        (["--epochs", "99999999999999999999999"], "--epochs must be at least 1 and at most 2147483647"),
        (["--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1, got 1.0"),
        (["--in-chans", "2"], "--in-chans must be 1 or 3, got 2"),
    ],
)
def test_cli_bad_training_options(cli, tmp_path, args, message):
    # Each of these reached torch (BatchNorm, DataLoader, the optimizer) and ended in a traceback,
    # or trained until killed; each is a usage error now, refused before any work.
    result = cli("train", "--data", "digits", "--epochs", "1", "--device", "cpu", "--no-progress", *args, "--out", tmp_path / "o")
    fails_cleanly(result, message, status=64)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_folder_with_one_training_image(cli, tmp_path):
    data = _digit_folder(tmp_path / "one", classes=("0",), per_class=2)  # one for training, one held out
    fails_cleanly(cli("train", "--data", data, "--epochs", "1", "--device", "cpu", "--no-progress", "--out", tmp_path / "o"),
           "leaves 1 training image(s), but a training batch needs at least 2")  # fmt: skip


def test_two_image_batches_train(tmp_path):
    # The smallest batch allowed works, including a ragged end that is dropped (5 = 2 + 2 + 1).
    result = train(replace(TINY, max_samples=5, batch_size=2, out=tmp_path / "o"))
    assert result.history[0]["epoch"] == 1


@pytest.mark.parametrize(("optimizer", "state_key"), [("sgd", "momentum_buffer"), ("adamw", "exp_avg")])
def test_sgd_and_adamw_train_and_change_the_weights(tmp_path, optimizer, state_key):
    result = train(replace(TINY, optimizer=optimizer, out=tmp_path / optimizer))
    last = load_checkpoint(result.last)
    torch.manual_seed(TINY.seed)  # the run's own initialisation, recreated
    initial = create_model(last.spec).state_dict()
    for key in ("conv1.weight", "layer4.1.conv2.weight", "fc.weight"):
        assert not torch.equal(initial[key], last.state_dict[key]), f"{optimizer} left {key} unchanged"
    saved = last.train["optimizer"]
    assert all(state_key in s for s in saved["state"].values())  # the optimizer asked for is the one that ran
    group = saved["param_groups"][0]
    if optimizer == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"] is True and group["weight_decay"] == 5e-4
    else:
        assert group["weight_decay"] == 0.05


def test_cosine_schedule_warms_up_peaks_at_one_and_decays_to_zero():
    total, warmup = 100, 10
    factors = [lr_factor(step, total, warmup, "cosine") for step in range(total)]
    rising, decaying = factors[: warmup + 1], factors[warmup:]
    assert all(a < b for a, b in zip(rising, rising[1:]))
    assert factors[0] == pytest.approx(1 / (warmup + 1))
    assert max(factors) == factors[warmup] == 1.0
    assert all(a > b for a, b in zip(decaying, decaying[1:]))
    assert factors[warmup + (total - warmup) // 2] == pytest.approx(0.5)
    assert factors[-1] < 1e-3 and lr_factor(total, total, warmup) == 0.0
    assert {lr_factor(s, total, warmup, "constant") for s in range(warmup, total)} == {1.0}


def test_label_smoothing_reaches_the_loss(tmp_path):
    # One step per run from the same seed: equal logits, so the reported loss is torch's
    # CrossEntropyLoss(label_smoothing=ε) of them, (1 - ε)·CE + ε·(mean over classes of −log p):
    # linear in ε. Equal steps in ε must give equal steps in the loss, and a non-zero one.
    losses = [train(replace(TINY, label_smoothing=eps, out=tmp_path / str(eps))).history[0]["train_loss"] for eps in (0.0, 0.2, 0.4)]
    assert losses[1] != losses[0]
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], abs=1e-5)


def test_pretrained_torchvision_state_dict_fine_tunes_with_a_new_head(tmp_path, cli):
    import torchvision

    torchvision_weights = torchvision.models.resnet18(num_classes=7).state_dict()
    torch.save(torchvision_weights, tmp_path / "tv.pth")
    result = cli("train", "--pretrained", tmp_path / "tv.pth", "--freeze", "backbone", "--input-size", "32",
                 "--max-samples", "32", "--epochs", "1", "--device", "cpu", "--no-progress", "--out", tmp_path / "ft")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "head replaced: fc with 7 outputs → new fc with 10 outputs" in result.stderr
    assert "(resnet18, foreign checkpoint, raw weights)" in result.stderr
    best = load_checkpoint(tmp_path / "ft" / "best.pth")
    assert best.spec == ModelSpec("resnet18", 10, tuple("0123456789"), "fc", 3, "imagenet")
    assert best.preprocess.channels == "rgb" and best.preprocess.input_size == (32, 32)
    for key, value in torchvision_weights.items():
        if not key.startswith("fc."):
            assert torch.equal(value, best.state_dict[key]), f"{key} was not carried over"
    assert tuple(best.state_dict["fc.weight"].shape) == (10, 512)


def test_grayscale_digits_train_an_rgb_backbone(tmp_path):
    result = train(replace(TINY, in_chans=3, out=tmp_path / "rgb"))
    best = load_checkpoint(result.best)
    assert best.spec.in_chans == 3 and tuple(best.state_dict["conv1.weight"].shape) == (16, 3, 3, 3)
    assert best.preprocess.channels == "rgb" and len(best.preprocess.mean) == 3
    assert best.preprocess.mean[0] == best.preprocess.mean[1] == best.preprocess.mean[2]  # the gray statistics, repeated
    assert result.test_acc is not None


def test_cli_resume_errors(cli, tiny_run, tmp_path):
    fails_cleanly(cli("train", "--resume", "--out", tmp_path / "nothing"), "nothing to resume")
    fails_cleanly(cli("train", "--resume", "--epochs", "1", "--out", tiny_run.out),
           "already trained 1 epochs")  # fmt: skip
    fails_cleanly(cli("train", "--freeze", "backbone", "--out", tmp_path / "o"), "--freeze backbone needs --pretrained", status=64)


def test_first_ctrl_c_is_deferred_to_a_step_boundary_and_the_second_is_immediate():
    # A SIGINT landing inside a lazy import (matplotlib's, at the first plot) used to surface as a
    # RuntimeError with a traceback; the first one is now only a request the loop honours. Run in
    # a fresh interpreter, as `rtk train` is: signal dispositions are process-wide, and the suite's
    # process holds whatever earlier tests' libraries installed.
    script = """
import signal
from toolkit.usecases.train import _stop_on_interrupt
before = signal.getsignal(signal.SIGINT)
with _stop_on_interrupt() as stop:
    signal.raise_signal(signal.SIGINT)
    assert stop.requested
    try:
        stop.check()
    except KeyboardInterrupt:
        print("deferred")
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        print("immediate")
assert signal.getsignal(signal.SIGINT) is before
print("restored")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["deferred", "immediate", "restored"]
    assert "stopping after the current step" in proc.stderr
