"""An ONNX classifier exported by another tool (no rtk metadata) taken by every command that runs one:
its spec read from the graph or given by flags, what cannot be known said, and parity judged against
the file itself on ONNX Runtime fp32."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_SPEC, fails_cleanly, noise_image
from toolkit.core.errors import RtkError
from toolkit.core.foreign_onnx import OnnxSpecHints, assumptions, foreign_meta
from toolkit.core.models import create_model
from toolkit.core.onnx_graph import load_onnx_graph, metadata_dict


def _export(module: torch.nn.Module, path, size: int, channels: int = 3, open_size: bool = False):
    """``torch.onnx.export`` as a user calls it: its own tensor names, a dynamic batch (and spatial size)."""
    axes = {0: "batch", 2: "height", 3: "width"} if open_size else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.randn(2, channels, size, size),), str(path), dynamo=False, input_names=["pixels"],
            output_names=["scores"], dynamic_axes={"pixels": axes, "scores": {0: "batch"}}, opset_version=17,
        )
    return path


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A narrow ResNet-18 (32×32 RGB, 10 classes, BatchNorm settled) exported by torch itself, not by rtk."""
    torch.manual_seed(0)
    model = create_model(TINY_SPEC)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    folder = tmp_path_factory.mktemp("foreign")
    path = _export(model, folder / "theirs.onnx", 32)
    assert metadata_dict(load_onnx_graph(path)) is None
    return path


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(noise_image(rng, 40, 40)).save(folder / f"{i}.png")
    return folder


def _copy(foreign, tmp_path):
    return shutil.copy(foreign, tmp_path / foreign.name)


def test_the_spec_is_read_from_the_graph_and_what_is_assumed_is_said(foreign):
    meta = foreign_meta(foreign)
    assert (meta.spec.in_chans, meta.preprocess.input_size, meta.spec.num_classes) == (3, (32, 32), 10)
    assert meta.spec.arch == "unknown" and meta.spec.class_names is None
    said = assumptions(foreign, meta)
    for phrase in ("carries no rtk metadata", "3×32×32 input and 10 classes are read from its graph", "ImageNet's normalisation",
                   "classes named by index", "cannot know its architecture"):
        assert phrase in said
    named = foreign_meta(foreign, OnnxSpecHints(class_names=tuple("abcdefghij"), mean=(0.5,) * 3, std=(0.25,) * 3))
    assert named.spec.class_names == tuple("abcdefghij") and named.preprocess.mean == (0.5, 0.5, 0.5)
    assert "ImageNet's normalisation" not in assumptions(foreign, named, OnnxSpecHints(mean=(0.5,) * 3, std=(0.25,) * 3))


def test_what_the_graph_leaves_open_must_be_given_and_what_it_fixes_cannot_be_contradicted(foreign, tmp_path):
    torch.manual_seed(0)
    open_size = _export(create_model(TINY_SPEC), tmp_path / "open.onnx", 32, open_size=True)
    with pytest.raises(RtkError, match="leaves its input's height and width open .* give them with --input-size"):
        foreign_meta(open_size)
    assert foreign_meta(open_size, OnnxSpecHints(input_size=(48, 40))).preprocess.input_size == (48, 40)
    with pytest.raises(RtkError, match="--input-size 64x64 disagrees with .*whose input is 32 pixels high"):
        foreign_meta(foreign, OnnxSpecHints(input_size=(64, 64)))
    with pytest.raises(RtkError, match="--class-names gives 3 names but .* scores 10 classes"):
        foreign_meta(foreign, OnnxSpecHints(class_names=("a", "b", "c")))


def test_predict_and_bench_run_it_and_say_what_they_assumed(foreign, photos, cli, tmp_path):
    model = _copy(foreign, tmp_path)
    result = cli("predict", photos, "-m", model, "--class-names", ",".join(f"c{i}" for i in range(10)), "-f", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["predictions"]
    assert len(rows) == 6 and all(r["top1"] in {f"c{i}" for i in range(10)} for r in rows)
    assert "carries no rtk metadata" in result.stderr and "ImageNet's normalisation" in result.stderr
    bench = cli("bench", model, "-b", "1", "--iters", "2", "--warmup", "0")
    assert bench.exit_code == 0, bench.output
    assert "ort" in bench.stdout and "carries no rtk metadata" in bench.stderr


def test_parity_takes_the_file_on_onnx_runtime_fp32_as_the_reference_and_lists_what_it_cannot_run(foreign, cli, tmp_path):
    model = _copy(foreign, tmp_path)
    report_path = tmp_path / "parity.json"
    result = cli("parity", model, "-e", "ort,eager,ort-fp16", "-b", "1,4", "--json", report_path)
    assert result.exit_code == 1, result.output
    report = json.loads(report_path.read_text())
    assert report["reference"] == "theirs.onnx on ONNX Runtime fp32 (CPU)" and report["passed"] is False
    [ort] = report["engines"]
    assert ort["engine"] == "ort" and ort["passed"] and ort["random"]["max_abs"] == 0
    reasons = {s["engine"]: s["reason"] for s in report["skipped"]}
    assert "runs a PyTorch checkpoint, and theirs.onnx is an ONNX file" in reasons["eager"]
    assert "theirs.fp16.onnx, which is not beside theirs.onnx" in reasons["ort-fp16"]
    assert result.stderr.strip().splitlines()[-1].startswith("error: parity incomplete: ")
    assert cli("parity", model, "-e", "ort", "-b", "2").exit_code == 0


def test_int8_export_of_a_foreign_onnx_is_checked_against_it_and_parity_judges_it(digits_model, cli, tmp_path):
    """The digits network, exported by torch under its own names: quantized by rtk from the ONNX file alone."""
    from toolkit.core.checkpoint import load_model

    net, _ = load_model(digits_model)
    model = _export(net, tmp_path / "digits.onnx", 8, channels=1)
    pre = ["--mean", "0.3053", "--std", "0.3759", "--class-names", ",".join(map(str, range(10)))]
    result = cli("export", model, "--precision", "int8", "--calib", "digits", "--max-drop", "2", *pre)
    assert result.exit_code == 0, result.output + result.stderr
    assert "checked against itself on ONNX Runtime fp32" in result.stderr
    for name in ("digits.int8.onnx", "digits.int8.u8.onnx"):
        record = metadata_dict(load_onnx_graph(tmp_path / name))
        assert record["source_onnx"] == "digits.onnx" and record["spec"]["arch"] == "unknown" and record["precision"] == "int8"
    parity = cli("parity", model, "-e", "ort,ort-int8", "--data", "digits", "--max-samples", "120", *pre)
    assert parity.exit_code == 0, parity.output + parity.stderr
    assert "real images judged: 120" in parity.stdout


def test_exporting_an_onnx_file_says_it_already_is_one_and_what_to_run(foreign, cli, tmp_path):
    model = _copy(foreign, tmp_path)
    result = cli("export", model)
    fails_cleanly(result, "already is an ONNX file", "rtk parity", "rtk bench", "rtk build", "--precision int8 --calib DATA")
    assert "refusing --output" not in result.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["theirs.onnx"]


def test_flags_for_a_foreign_onnx_are_refused_elsewhere(foreign, cli, tmp_path, exported_models):
    files = exported_models(tmp_path / "rtk", precisions=("fp32",))
    fails_cleanly(cli("bench", files["ckpt"], "--input-size", "32"), "--input-size describe an ONNX file without rtk metadata")
    fails_cleanly(cli("bench", files["fp32"], "--class-names", "a,b"), "carries rtk metadata, which gives its spec")
    model = _copy(foreign, tmp_path)
    for flags, phrase in (
        (("--input-size", "32x"), "--input-size takes a side or HEIGHTxWIDTH"),
        (("--input-size", "99999999999"), "--input-size takes a side or HEIGHTxWIDTH"),
        (("--std", "0.2,0,0.2"), "--std takes standard deviations above 0"),
        (("--mean", "nan"), "--mean takes one finite number per channel"),
        (("--class-names", " , "), "names no class"),
    ):
        fails_cleanly(cli("bench", model, *flags), phrase, status=64)  # a value that cannot be is a usage error


def test_build_takes_a_foreign_onnx_and_records_its_spec(foreign, cli, tmp_path, fake_trt):
    from toolkit.core.trt.sidecar import read_sidecar

    model = _copy(foreign, tmp_path)
    result = cli("build", model, "--precision", "fp32", "--class-names", ",".join(f"c{i}" for i in range(10)))
    assert result.exit_code == 0, result.output + result.stderr
    sidecar = read_sidecar(tmp_path / "theirs.fp32.engine")
    assert sidecar.spec.arch == "unknown" and sidecar.spec.class_names[3] == "c3" and sidecar.preprocess.input_size == (32, 32)
