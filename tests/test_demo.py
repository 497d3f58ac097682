"""``rtk demo`` end to end with tiny settings: every artefact it reports exists and loads."""

import csv
import json

import numpy as np
from PIL import Image

import engines
from toolkit.checkpoint import load_checkpoint


def test_demo_runs_end_to_end_and_every_artefact_loads(cli, tmp_path):
    out = tmp_path / "demo"
    stale = out / "samples" / "stale.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    keep = out / "notes.txt"
    keep.write_text("mine")

    result = cli("demo", "--out", out, "--epochs", "1", "--max-samples", "40", "--bench-seconds", "0.05", "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    for text in ("eager", "ort-fp16", "parity", "images/s", "files written", "demo finished"):
        assert text in result.output
    assert "▶ 5/5 classify" in result.stderr and "[bold" not in result.stderr  # step lines, no markup leaking

    # Re-running replaces what the demo wrote, and nothing else.
    assert not stale.exists() and keep.read_text() == "mine"

    ckpt = load_checkpoint(out / "train" / "best.pth")
    assert ckpt.spec.num_classes == 10 and ckpt.spec.class_names == tuple("0123456789")
    x = np.zeros((2, ckpt.spec.in_chans, *ckpt.preprocess.input_size), np.float32)
    for onnx in ("best.onnx", "best.fp16.onnx"):
        with engines.load(out / "train" / onnx) as engine:
            assert engine(x).shape == (2, 10)
    history = json.loads((out / "train" / "history.json").read_text())
    assert len(history["epochs"]) == 1

    bench = json.loads((out / "bench" / "bench.json").read_text())
    engines_run = {row["engine"] for row in bench["results"] if row["status"] == "ok"}
    assert {"eager", "ort"} <= engines_run
    with open(out / "bench" / "bench.csv", newline="") as fh:
        assert list(csv.DictReader(fh))

    with open(out / "predictions" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 * 10 and all(r["top1"] in "0123456789" and not r["error"] for r in rows)

    for png in ("train/curves.png", "bench/bench.png", "predictions/confusion.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG"


def test_demo_refuses_a_file_as_output_folder(cli, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    result = cli("demo", "--out", target, "--epochs", "1")
    assert result.exit_code == 1
    assert "is a file" in result.stderr and "Traceback" not in result.stderr
