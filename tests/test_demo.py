"""``rtk demo`` end to end with tiny settings: every artefact it reports exists and loads."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import toolkit.cli.demo
import toolkit.usecases.demo
from helpers import opened
from toolkit.core.checkpoint import load_checkpoint
from toolkit.core.images import find_images, load_image


def check_artefact(what: str, path) -> None:
    """Open one reported artefact the way a user would and check it holds what its name says."""
    assert path.exists(), (what, path)
    if path.is_dir():
        samples = find_images(path, recursive=True)
        assert len(samples) == 10 * 10, what  # 10 per digit
        for sample in samples:
            load_image(sample)
    elif path.suffix == ".pth":
        ckpt = load_checkpoint(path)
        assert ckpt.spec.num_classes == 10 and ckpt.spec.class_names == tuple("0123456789")
    elif path.suffix == ".onnx":
        with opened(path) as engine:
            x = np.zeros((2, *engine.input_shape), np.float32)
            assert engine(x).shape == (2, 10)
    elif path.suffix == ".json":
        assert json.loads(path.read_text())
    elif path.suffix == ".csv":
        with open(path, newline="") as fh:
            assert list(csv.DictReader(fh)), what
    elif path.suffix == ".png":
        with Image.open(path) as img:
            assert img.format == "PNG"
            img.load()
    else:  # a new kind of artefact needs a check of its own here
        raise AssertionError(f"no check for {what}: {path}")


def test_demo_runs_end_to_end_and_every_artefact_loads(cli, tmp_path, monkeypatch):
    out = tmp_path / "demo"
    stale = out / "samples" / "stale.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    (out / toolkit.usecases.demo.DEMO_MARKER).touch()  # that earlier run was a demo's: its folders are replaced
    keep = out / "notes.txt"
    keep.write_text("mine")
    # The real run_demo, recorded, so the test sees the DemoResult the command printed its summary from.
    results = []
    real_run_demo = toolkit.usecases.demo.run_demo

    def recorded_run_demo(*args, **kwargs):
        results.append(real_run_demo(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(toolkit.usecases.demo, "run_demo", recorded_run_demo)  # the command imports it when it runs

    result = cli("demo", "--out", out, "--epochs", "1", "--max-samples", "40", "--bench-seconds", "0.05", "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    for text in ("eager", "ort-fp16", "parity", "images/s", "files written", "demo finished"):
        assert text in result.output
    assert "▶ 5/5 classify" in result.stderr and "[bold" not in result.stderr  # step lines, no markup leaking
    assert "▶ 2/5 export fp32, fp16 and int8 ONNX" in result.stderr  # the step names every file it writes
    # The benchmark step reports each engine × batch size as it finishes instead of staying silent.
    bench_lines = [line for line in result.stderr.splitlines() if "img/s" in line]
    # int8 joins parity and bench when its export passes its check; a one-epoch model may miss
    # int8's 99% top-1 agreement, and the demo then says why it goes on without it.
    has_int8 = "ort-int8" in result.output
    assert has_int8 or "int8 left out: " in result.stderr
    assert len(bench_lines) == (3 if has_int8 else 2) * 2 and any("eager" in line and "batch 64" in line for line in bench_lines)
    # Each engine's speed against eager, and int8's against its own runtime's fp32 too.
    assert "ort speed: batch 1: " in result.output and "x eager" in result.output
    if has_int8:
        assert "ort-int8 speed: batch 1: " in result.output and "x ort" in result.output

    # Re-running replaces what the demo wrote, and nothing else.
    assert not stale.exists() and keep.read_text() == "mine"

    [demo] = results
    artefacts = demo.artefacts()
    for kind in ("checkpoint (best)", "ONNX fp32", "ONNX fp16", "benchmark JSON", "sample images", "confusion matrix"):
        assert kind in artefacts
    for what, path in artefacts.items():
        assert path.is_relative_to(out), (what, path)
        check_artefact(what, path)
    assert len(json.loads(artefacts["training history"].read_text())["epochs"]) == 1
    bench = json.loads(artefacts["benchmark JSON"].read_text())
    assert {"eager", "ort"} <= {row["engine"] for row in bench["results"] if row["status"] == "ok"}
    assert ("ONNX int8" in artefacts) == ("ONNX int8 (uint8 activations, ort-int8)" in artefacts) == has_int8
    with open(artefacts["predictions CSV"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 * 10 and all(r["top1"] in "0123456789" and not r["error"] for r in rows)


def test_the_summary_says_slower_where_a_lower_precision_is_slower():
    from benchmarks.harness import BenchResult, _fill_speedups
    from toolkit.cli.demo import speed_lines

    rows = [BenchResult(name, "fp32", "cpu", "ok", batch_size=1, io="host", throughput_ips=ips) for name, ips in (("eager", 100.0), ("ort", 339.0), ("ort-int8", 120.0))]
    _fill_speedups(rows)
    assert speed_lines(rows) == ["ort speed: batch 1: 3.39x eager", "ort-int8 speed: batch 1: 0.35x ort (slower), 1.20x eager"]


def test_demo_refuses_a_file_as_output_folder(cli, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    result = cli("demo", "--out", target, "--epochs", "1")
    assert result.exit_code == 1
    assert "is a file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
        (["--device", "tpu"], "'tpu' is not a device; use auto, cpu or cuda"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--max-samples", "1"], "--max-samples must be at least 2"),
        (["--bench-seconds", "0"], "--bench-seconds must be more than 0"),
        (["--bench-seconds", "nan"], "--bench-seconds must be a finite number"),
    ],
)
def test_a_bad_option_leaves_the_previous_run_untouched(cli, tmp_path, args, message):
    if message == "no CUDA GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "demo"
    earlier = {out / "train" / "best.pth": b"weights", out / "bench" / "bench.json": b"{}", out / "samples" / "0_0.png": b"png"}
    for path, data in earlier.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    result = cli("demo", "--out", out, *args)
    assert result.exit_code == (1 if "CUDA" in message else 64), result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert {path: path.read_bytes() for path in earlier} == earlier
