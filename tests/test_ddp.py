"""Multi-process training: two CPU processes (gloo) under torchrun train one short epoch, and
rank 0 alone writes the checkpoints."""

from __future__ import annotations

import subprocess
import sys

from toolkit.core.checkpoint import load_checkpoint


def test_torchrun_two_cpu_processes_write_one_checkpoint(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "toolkit.cli.app", "train", "--input-size", "8", "--max-samples", "64", "--batch-size", "16",
        "--width", "16", "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DistributedDataParallel over 2 processes (gloo)" in proc.stderr
    # One set of outputs, written by rank 0 only; each line of the summary printed once.
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "curves.png", "history.json", "last.pth"]
    assert proc.stderr.count("epoch 1/1") == 1
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt.train["epoch"] == 1 and ckpt.spec.arch == "resnet18" and ckpt.spec.width == 16
    assert not any(k.startswith("module.") for k in ckpt.state_dict)  # saved unwrapped
    # 64 images over 2 ranks of batch 16: two steps each, so Adam took exactly 2 steps.
    steps = {int(v["step"]) for v in ckpt.train["optimizer"]["state"].values()}
    assert steps == {2}
