"""Evaluation: `evaluate` against a hand computation, `rtk eval` on checkpoints and ONNX, class
matching by name, the artefact's own preprocessing, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import TINY_PRE, fails_cleanly, make_checkpoint, opened
from toolkit.core.data import resolve_data, write_digit_images
from toolkit.core.spec import ModelSpec
from toolkit.usecases.train import TrainOptions, train

TINY = TrainOptions(data="digits", input_size=8, max_samples=64, epochs=1, batch_size=32, width=16, device="cpu", progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(replace(TINY, out=tmp_path_factory.mktemp("run")))


def test_evaluate_matches_a_direct_forward_pass(trained):
    from toolkit.core.checkpoint import load_model
    from toolkit.usecases.evaluate import evaluate

    source = resolve_data("digits", max_samples=64)
    with opened(trained.best) as engine:
        dataset = source.dataset("test", engine.preprocess)
        report = evaluate(engine, dataset, batch_size=10, class_names=source.class_names)
    model, _ = load_model(trained.best)
    inputs, labels = dataset.arrays()
    with torch.no_grad():
        predicted = model(torch.from_numpy(inputs)).argmax(1).numpy()
    assert report.total == 64 and report.correct == int((predicted == labels).sum())
    assert report.accuracy == pytest.approx(trained.test_acc)
    np.testing.assert_array_equal(report.confusion.sum(axis=1), np.bincount(labels, minlength=10))


def test_cli_eval_json_and_confusion_png(cli, trained, tmp_path):
    png = tmp_path / "cm.png"
    result = cli("eval", trained.best, "--max-samples", "64", "--confusion", png, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["engine"] == "eager" and report["total"] == 64
    assert report["accuracy"] == pytest.approx(trained.test_acc)
    assert set(report["per_class"]) == set("0123456789")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_table(cli, trained):
    result = cli("eval", trained.best, "--max-samples", "64", "--split", "val")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "per-class accuracy" in result.stdout
    assert (trained.best.parent / "best.confusion-val.png").exists()


def test_eval_prepares_images_with_the_artefacts_preprocess(cli, tmp_path):
    # A 32×32 RGB model evaluated on the 8×8 gray digits: the images are prepared the way the
    # checkpoint says, with no flag to repeat.
    spec = ModelSpec(arch="resnet18", num_classes=10, class_names=tuple("0123456789"), stem="small", width=16)
    path = make_checkpoint(tmp_path / "rgb32.pth", spec, TINY_PRE)
    result = cli("eval", path, "--max-samples", "16", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"] == 16


def test_eval_matches_folder_classes_by_name(cli, trained, tmp_path):
    for file in write_digit_images(tmp_path / "two", split="test", per_class=3):
        if file.parent.name not in ("3", "7"):
            file.unlink()
    for folder in (tmp_path / "two").iterdir():
        if not any(folder.iterdir()):
            folder.rmdir()
    result = cli("eval", trained.best, "--data", tmp_path / "two", "--val-split", "0.5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    supported = {name for name, row in report["per_class"].items() if row["support"]}
    assert supported == {"3", "7"} and report["total"] == 6  # the whole folder: its split exists for training
    assert report["split"] == "all"
    held_out = json.loads(cli("eval", trained.best, "--data", tmp_path / "two", "--val-split", "0.5", "--split", "val", "--json").stdout)
    assert held_out["total"] == 4  # asked for: training's hold-out, ceil(3 × 0.5) = 2 per class


def test_eval_onnx_gives_the_checkpoints_answers(cli, trained, tmp_path):
    from exporters.onnx import ExportOptions, export_onnx

    # The quicker exporter: eval's reading of an ONNX is the subject, not the trace.
    onnx_path = export_onnx(trained.best, tmp_path / "model.onnx", options=ExportOptions(check=False, exporter="torchscript", opset=17))[0]
    ckpt = json.loads(cli("eval", trained.best, "--max-samples", "64", "--json").stdout)
    result = cli("eval", onnx_path, "--max-samples", "64", "--json")
    assert result.exit_code == 0, result.output
    onnx = json.loads(result.stdout)
    assert onnx["engine"].startswith("ort")
    # Same images, same preprocessing from the ONNX metadata: at most a near-tie may flip.
    assert abs(onnx["correct"] - ckpt["correct"]) <= 1




def test_eval_bad_input(cli, trained, tmp_path):
    fails_cleanly(cli("eval", tmp_path / "missing.pth"), "does not exist")
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    write_digit_images(tmp_path / "digits_png", split="test", per_class=2)
    (tmp_path / "digits_png" / "0").rename(tmp_path / "pets" / "cat" / "imgs")
    (tmp_path / "pets" / "dog").mkdir()
    (tmp_path / "digits_png" / "1").rename(tmp_path / "pets" / "dog" / "imgs")
    fails_cleanly(cli("eval", trained.best, "--data", tmp_path / "pets", "--val-split", "0.5"), "classes the model does not know: cat, dog")
    fails_cleanly(cli("eval", trained.best, "--data", tmp_path / "pets", "--split", "test"), "has no test split")
    fails_cleanly(cli("eval", trained.best, "--data", "svhn", "--data-root", tmp_path / "none"), "pass --download")
