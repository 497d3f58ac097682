"""Parity: the metrics are right, a good export passes, a corrupted one fails and is named,
and ONNX files that do not fit the checkpoint are refused with one clear line."""

import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from exporters.onnx import ExportOptions, export_onnx
from helpers import TINY_PRE, TINY_SPEC, fails_cleanly, make_checkpoint, opened
from toolkit.core.errors import install_hint
from toolkit.core.spec import ModelSpec, Preprocess
from toolkit.usecases.parity import DEFAULT_TOLERANCES, ParityOptions, compare, run_parity, tolerance_for

# The suite's tiny model, whose exports the session makes once (conftest.ExportedModels).
SPEC, PRE = TINY_SPEC, TINY_PRE


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, exported_models):
    """A checkpoint with its fp32 and fp16 ONNX next to it."""
    folder = tmp_path_factory.mktemp("parity")
    exported_models(folder, SPEC, PRE, ("fp32", "fp16"))
    return folder


# --- the metrics ----------------------------------------------------------------------------


def test_compare_measures_errors_agreement_and_accuracy():
    ref = np.array([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    cand = ref.copy()
    cand[1, 2] = 2.5  # sample 1 flips from class 1 to class 2
    m = compare(ref, cand, "fp32", labels=np.array([0, 1]))
    assert m.max_abs == pytest.approx(1.5) and m.mean_abs == pytest.approx(1.5 / 12)
    assert m.max_rel == pytest.approx(1.5) and m.failed_elements == 1
    assert (m.worst_sample, m.worst_class, m.worst_reference, m.worst_candidate) == (1, 2, 1.0, 2.5)
    assert m.top1_agreement == 0.5 and m.top5_overlap == 1.0
    assert m.accuracy == 0.5 and m.reference_accuracy == 1.0 and m.accuracy_delta == -0.5
    assert not m.passed and any("top-1 agreement" in f for f in m.failures)
    assert compare(ref, ref, "fp32").passed


def test_element_check_fails_only_beyond_both_tolerances():
    ref = np.array([[100.0, 1e-6]])
    # 100 → 100.005: abs error 5e-3 > atol but relative 5e-5 <= rtol, so it passes;
    # 1e-6 → 5e-5: relative error is huge but absolute 4.9e-5 <= atol, so it passes too.
    cand = np.array([[100.005, 5e-5]])
    tol = tolerance_for("fp32", atol=1e-4, rtol=1e-4)
    assert compare(ref, cand, tolerance=tol).failed_elements == 0
    assert compare(ref, np.array([[100.05, 5e-5]]), tolerance=tol).failed_elements == 1


def test_atol_is_read_against_each_samples_logit_scale():
    # Logits in the thousands (a random-weight ResNet-101) carry float32 rounding of that size into
    # the logits near zero too; the same error on a sample whose logits are small is a real one.
    large = np.array([[7856.25, 0.5, -3.0]])
    assert compare(large, large + [[0.08, 0.02, 0.0]], "fp32").passed
    small = np.array([[1.0, 0.5, -3.0]])
    assert compare(small, small + [[0.0, 0.02, 0.0]], "fp32").failed_elements == 1
    both = compare(np.vstack([large, small]), np.vstack([large, small]) + 0.02, "fp32")
    assert both.failed_elements == 3 and not both.passed  # only the small sample's three logits


def test_nan_logits_fail_and_fp16_defaults_judge_by_cosine():
    ref = np.random.default_rng(0).standard_normal((4, 10))
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert any("NaN" in f for f in compare(ref, bad).failures)
    noisy = ref + 1e-3 * np.random.default_rng(1).standard_normal(ref.shape)
    assert not compare(ref, noisy, "fp32").passed  # beyond fp32's element check
    assert compare(ref, noisy, "fp16").passed  # but well within fp16's cosine
    assert DEFAULT_TOLERANCES["fp16"].min_cosine == 0.999


# --- rtk parity -------------------------------------------------------------------------------


def test_parity_passes_on_a_good_export_and_reports_everything(model_dir, cli, tmp_path):
    report_path = tmp_path / "report.json"
    result = cli("parity", model_dir / "m.pth", "--engines", "eager,ort,ort-fp16", "--json", report_path)
    assert result.exit_code == 0, result.output
    for metric in ("max abs error", "mean abs error", "max rel error", "cosine (min)", "top-1 agreement", "top-5 overlap"):
        assert metric in result.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] and [e["engine"] for e in report["engines"]] == ["eager", "ort", "ort-fp16"]
    ort = report["engines"][1]["random"]
    assert ort["samples"] == 21 and ort["max_abs"] < 1e-4 and ort["top1_agreement"] == 1.0


def test_parity_exits_1_and_names_the_engine_whose_onnx_was_corrupted(model_dir, cli, tmp_path):
    model = onnx.load(str(model_dir / "m.onnx"))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    values = onnx.numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).standard_normal(values.shape).astype(values.dtype)
    weight.CopyFrom(onnx.numpy_helper.from_array(values + 0.5 * noise * values.std(), weight.name))
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(model, str(corrupted))
    result = cli("parity", model_dir / "m.pth", "--engines", "eager,ort", "--onnx", corrupted)
    assert result.exit_code == 1, result.output
    assert "parity failed: ort" in result.stderr
    assert "ort fails on random inputs" in result.stdout and "Worst: sample" in result.stdout


def test_run_parity_from_python_exports_missing_artefacts(tmp_path):
    ckpt = make_checkpoint(tmp_path / "fresh.pth", SPEC, PRE)
    report = run_parity(ckpt, ParityOptions(engines=("ort",), batch_sizes=(2, 3)))
    assert (tmp_path / "fresh.onnx").exists() and report.passed
    assert report.results[0].random.samples == 5 and report.to_dict()["failed"] == []


def test_parity_accepts_a_foreign_onnx_judged_by_the_checkpoint_spec(model_dir, cli, tmp_path):
    model = onnx.load(str(model_dir / "m.onnx"))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    result = cli("parity", model_dir / "m.pth", "--engines", "ort", "--onnx", bare)
    assert result.exit_code == 0, result.output


# --- bad input --------------------------------------------------------------------------------




@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript")
def test_parity_refuses_an_nhwc_onnx(model_dir, cli, tmp_path):
    from toolkit.core.checkpoint import load_model

    net, _ = load_model(model_dir / "m.pth")

    class ChannelsLastInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2))

    path = tmp_path / "nhwc.onnx"
    torch.onnx.export(ChannelsLastInput().eval(), (torch.zeros(2, 32, 32, 3),), str(path), dynamo=False, input_names=["input"], output_names=["logits"])
    fails_cleanly(cli("parity", model_dir / "m.pth", "--engines", "ort", "--onnx", path), "NHWC")


def test_parity_refuses_an_onnx_with_another_class_count(model_dir, cli, tmp_path):
    other = make_checkpoint(tmp_path / "other.pth", ModelSpec(arch="resnet18", num_classes=4, width=16), PRE)
    # The quicker exporter: the subject is the refusal, which reads the graph and its metadata.
    (path,) = export_onnx(other, options=ExportOptions(check=False, exporter="torchscript", opset=17))
    fails_cleanly(cli("parity", model_dir / "m.pth", "--engines", "ort", "--onnx", path), "4 classes but the reference")
    model = onnx.load(str(path))
    del model.metadata_props[:]  # without metadata the graph's own output size gives it away
    onnx.save(model, str(path))
    fails_cleanly(cli("parity", model_dir / "m.pth", "--engines", "ort", "--onnx", path), "produces 4 classes but the model has 10")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--atol", "-1"], "--atol must be at least 0"),
        (["--onnx", "missing.onnx"], "does not exist"),
        (["--max-samples", "0"], "--max-samples must be at least 1"),
        (["--seed", "-1"], "--seed must be at least 0 and at most 4294967295"),
        (["--min-top1", "-0.5"], "--min-top1 must be at least 0 and at most 1"),
    ],
)
def test_parity_rejects_bad_options(model_dir, cli, args, message):
    fails_cleanly(cli("parity", model_dir / "m.pth", *args), message, status=1 if "exist" in message else 64)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engines", "ort,tvm"], "unknown engine 'tvm'"),
        (["-e", "ort-bf16"], "runs fp32, fp16 or int8, not bf16"),
        (["--batch-sizes", "1,x"], "--batch-size takes comma-separated positive integers"),
        (["-b", "0"], "--batch-size takes comma-separated positive integers"),
        (["--device", "gpu"], "is not a device"),
    ],
)
def test_parity_option_typos_are_usage_errors(model_dir, cli, args, message):
    result = cli("parity", model_dir / "m.pth", *args)
    assert result.exit_code == 64 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_parity_of_a_missing_checkpoint_fails_cleanly(cli, tmp_path):
    fails_cleanly(cli("parity", tmp_path / "none.pth"), "does not exist")


def test_max_samples_keeps_the_first_images_of_the_split(tmp_path):
    from toolkit.core.checkpoint import load_checkpoint
    from toolkit.core.data import write_digit_images
    from toolkit.core.image_sets import judged_set, prepare_images

    spec = ModelSpec(arch="resnet18", num_classes=10, class_names=tuple("0123456789"), in_chans=1, stem="small", width=16)
    pre = Preprocess(input_size=(8, 8), resize=8, crop=False, mean=(0.5,), std=(0.5,), channels="gray")
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "m.pth", spec, pre))
    folder = tmp_path / "digits"
    write_digit_images(folder, split="test", per_class=3)
    everything = prepare_images(judged_set(folder, 8), ckpt.spec, ckpt.preprocess)
    first = prepare_images(judged_set(folder, 8), ckpt.spec, ckpt.preprocess, limit=4)
    x_all, y_all, x, y, label = everything.images, everything.labels, first.images, first.labels, first.source
    assert x.shape == (4, 1, 8, 8) and "4 images" in label
    np.testing.assert_array_equal(x, x_all[:4])
    np.testing.assert_array_equal(y, y_all[:4])


# --- a trained model on real data --------------------------------------------------------------


def test_parity_on_a_digits_trained_model_and_its_test_images(digits_model, cli, tmp_path):
    report_path = tmp_path / "digits.json"
    result = cli("parity", digits_model, "--engines", "eager,ort,ort-fp16", "--data", "digits", "--json", report_path)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "digits (test), 360 images" in result.stdout
    engines_by_name = {e["engine"]: e for e in json.loads(report_path.read_text())["engines"]}
    ort, fp16 = engines_by_name["ort"]["data"], engines_by_name["ort-fp16"]["data"]
    assert ort["samples"] == 360 and ort["max_abs"] < 1e-4 * max(1.0, ort["scale"]) and ort["top1_agreement"] == 1.0
    assert fp16["top1_agreement"] >= 0.99 and fp16["min_cosine"] >= 0.999
    assert abs(fp16["accuracy_delta"]) <= 0.01 and ort["accuracy"] == ort["reference_accuracy"]


@pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason=f"openvino is not installed ({install_hint('openvino')})")
def test_openvino_parity_on_the_digits_test_images(digits_model, cli, tmp_path):
    # ov is judged as fp32, ov-bf16 as bf16 (where the CPU has bf16 units), ov-int8 as int8, on
    # real images; the int8 file is calibrated on training images, as `rtk export --calib` does.
    from engines.openvino import cpu_capabilities
    from helpers import make_qdq_onnx
    from toolkit.core.artefacts import onnx_path_for
    from toolkit.core.checkpoint import load_checkpoint
    from toolkit.core.data import resolve_data

    model = shutil.copy(digits_model, tmp_path / "m.pth")  # the int8 file below must not sit beside the shared one
    ckpt = load_checkpoint(model)
    with opened(model, "ov") as ov:  # exports the fp32 ONNX next to the checkpoint
        fp32_onnx = ov.path
    calibration, _ = resolve_data("digits", input_size=8).dataset("train", preprocess=ckpt.preprocess).arrays(limit=64)
    make_qdq_onnx(fp32_onnx, onnx_path_for(model, "int8"), calibration)
    names = ["ov", "ov-int8"] + (["ov-bf16"] if "BF16" in cpu_capabilities() else [])
    report_path = tmp_path / "ov.json"
    result = cli("parity", model, "--engines", ",".join(names), "--data", "digits", "--json", report_path)
    assert result.exit_code == 0, result.output
    by_name = {e["engine"]: e for e in json.loads(report_path.read_text())["engines"]}
    expected = {"ov": "fp32", "ov-int8": "int8", "ov-bf16": "bf16"}
    assert {name: by_name[name]["precision"] for name in names} == {name: expected[name] for name in names}
    ov = by_name["ov"]["data"]
    assert ov["samples"] == 360 and ov["top1_agreement"] == 1.0 and ov["accuracy"] == ov["reference_accuracy"]
    int8 = by_name["ov-int8"]["data"]
    assert int8["min_cosine"] >= 0.98 and abs(int8["accuracy_delta"]) <= 0.02


# --- engines that cannot run here -------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA reports")
def test_an_engine_that_cannot_run_here_is_listed_and_the_others_are_still_judged(model_dir, cli, tmp_path):
    """The README's own line on a CPU machine: the GPU engines are named with the reason, before any slow work, and
    the run still exits 1, so a CI gate never passes on engines it did not judge."""
    report_path = tmp_path / "parity.json"
    result = cli("parity", model_dir / "m.pth", "-e", "eager,ort,trt,ort-cuda", "-b", "2", "--json", report_path)
    assert result.exit_code == 1, result.output
    report = json.loads(report_path.read_text())
    assert [e["engine"] for e in report["engines"]] == ["eager", "ort"] and all(e["passed"] for e in report["engines"])
    reasons = {s["engine"]: s["reason"] for s in report["skipped"]}
    assert reasons["trt"].startswith("trt needs an NVIDIA GPU with CUDA") and install_hint("trt") in reasons["trt"]
    assert "CUDAExecutionProvider" in reasons["ort-cuda"] or "NVIDIA GPU" in reasons["ort-cuda"]
    assert report["passed"] is False and report["failed"] == []
    assert "random inputs (batches 2, seed 0)" in result.stdout  # the table of what ran is printed
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: parity incomplete: trt needs an NVIDIA GPU") and "2 other engine(s) judged above" in last
    assert not (model_dir / "m.engine").exists()  # nothing was built or exported for an engine that cannot run


def test_measures_that_are_reported_but_not_judged_are_marked(model_dir, cli):
    result = cli("parity", model_dir / "m.pth", "-e", "ort-fp16", "-b", "2", env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 3}
    assert rows["logits beyond atol+rtol"].rstrip(" │").endswith("*")  # fp16: judged by cosine, not per logit
    assert rows["top-1 agreement"].rstrip(" │").endswith("*")  # near-ties of random inputs: reported only
    assert not rows["cosine (min)"].rstrip(" │").endswith("*")
    assert "* reported, not judged: the verdict rests on the other measures" in " ".join(result.stdout.split())


def test_a_checkpoint_without_class_names_says_how_the_folders_were_taken(cli, tmp_path):
    from PIL import Image

    from helpers import noise_image

    nameless = make_checkpoint(tmp_path / "nameless.pth", ModelSpec(arch="resnet18", num_classes=3, stem="small", width=16), PRE)
    rng = np.random.default_rng(1)
    for name in ("cat", "dog", "fox"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(noise_image(rng, 32, 32)).save(tmp_path / "photos" / name / f"{i}.png")
    result = cli("parity", nameless, "-e", "ort", "-b", "2", "--data", tmp_path / "photos")
    assert result.exit_code == 0, result.output
    assert "the model has no class names, so the data's 3 classes in sorted order (cat, dog, fox)" in " ".join(result.stderr.split())
    assert "only 9 images judged" in result.stderr and "real images judged: 9" in result.stdout
    assert "accuracy (Δ)" in result.stdout  # scored, with the assumption said
