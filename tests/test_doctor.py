"""``rtk doctor``: what this machine can run (human and JSON), and ``--check`` running it."""

from __future__ import annotations

import json

import pytest
import torch

from toolkit.usecases.doctor import engine_families

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA reports")


def _doctor_json(cli, *args) -> dict:
    result = cli("doctor", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_one_engine_of_every_runtime_family_in_the_grammar():
    from engines.names import ALL_ENGINES, parse_engine

    families = [parse_engine(n).family for n in engine_families()]
    assert families == list(dict.fromkeys(parse_engine(n).family for n in ALL_ENGINES))
    assert {"eager", "ort", "ort-cuda", "ort-trt", "trt"} <= set(families)


@NO_CUDA
def test_json_says_what_runs_here_and_what_would_enable_the_rest(cli):
    report = _doctor_json(cli)
    engines = {e["engine"]: e for e in report["engines"]}
    assert list(engines) == engine_families()
    assert engines["eager"]["status"] == engines["ort"]["status"] == "available"
    for name in ("ort-cuda", "ort-trt", "trt"):
        assert engines[name]["status"] == "unavailable"
        assert engines[name]["reason"].startswith("needs an NVIDIA GPU with CUDA")
        assert engines[name]["install"]
    assert report["torch"]["cuda_available"] is False and report["torch"]["gpus"] == []
    assert report["onnxruntime"]["providers"]["CPUExecutionProvider"] == {"starts": True}
    assert report["environment"]["python"]


@NO_CUDA
def test_human_output_lists_engines_reasons_and_providers(cli):
    result = cli("doctor", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "CPUExecutionProvider: starts" in out
    for name in engine_families():
        assert f"│ {name} " in out
    assert out.count("unavailable") >= 3 and "needs an NVIDIA GPU with CUDA" in out


def test_tensorrt_version_and_fp16_route(cli, fake_trt):
    trt = _doctor_json(cli)["tensorrt"]
    assert trt["version"] == fake_trt.__version__
    route = "BuilderFlag.FP16 on the fp32 ONNX" if fake_trt.__version__.startswith("10.") else "strongly typed, from the fp16 ONNX"
    assert trt["fp16_route"] == route


@pytest.mark.parametrize("args,message", [
    (("--engines", "eager"), "--engines, --device and --output apply with --check"),
    (("--check", "--engines", "bogus"), "unknown engine 'bogus'"),
    (("--check", "--device", "tpu"), "is not a device; use cpu or cuda"),
    (("--check", "--bench-seconds", "0"), "--bench-seconds must be more than 0"),
    (("--check", "--bench-seconds", "nan"), "--bench-seconds must be a finite number"),
    (("--check", "-o", "report.txt"), "refusing --output report.txt: it would hold JSON"),
])  # fmt: skip
def test_bad_options_are_one_line(cli, args, message):
    result = cli("doctor", *args)
    # Usage errors (64) are refused while the command line is read, before any check runs.
    assert result.exit_code == (1 if "refusing" in message else 64)
    assert message in result.stderr and "Traceback" not in result.output


def test_check_runs_parity_and_a_bench_and_writes_one_report(cli, tmp_path):
    report_path = tmp_path / "doctor.json"
    result = cli("doctor", "--check", "--engines", "eager", "--bench-seconds", "0.1", "-o", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["format"] == "rtk.doctor" and report["passed"] is True
    (check,) = report["checks"]
    assert check["engine"] == "eager" and check["status"] == "passed"
    assert check["parity"]["passed"] is True and check["parity"]["random"]["max_abs"] == 0
    assert [row["batch_size"] for row in check["bench"]] == [1, 4]
    assert all(row["throughput_ips"] > 0 for row in check["bench"])
    assert "eager" in result.stdout and "passed" in result.stdout and str(report_path) in result.stdout.replace("\n", "")


@NO_CUDA
def test_check_fails_when_an_engine_that_was_asked_for_cannot_run(cli, tmp_path):
    report_path = tmp_path / "doctor.json"
    result = cli("doctor", "--check", "--engines", "eager-graph", "--bench-seconds", "0.1", "-o", report_path)
    assert result.exit_code == 1
    assert "eager-graph failed on this machine" in result.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    (check,) = report["checks"]
    assert check["status"] == "failed" and "CUDA" in check["reason"]


@NO_CUDA
@pytest.mark.slow
def test_check_on_a_cpu_machine_passes_eager_and_ort_and_lists_the_gpu_engines(cli, tmp_path):
    report_path = tmp_path / "doctor.json"
    result = cli("doctor", "--check", "--bench-seconds", "0.2", "-o", report_path)
    assert result.exit_code == 0, result.output
    checks = {c["engine"]: c for c in json.loads(report_path.read_text())["checks"]}
    assert checks["eager"]["status"] == checks["ort"]["status"] == "passed"
    for name in ("ort-cuda", "ort-trt", "trt"):
        assert checks[name]["status"] == "unavailable" and "needs an NVIDIA GPU" in checks[name]["reason"]


def test_openvino_is_probed_like_the_other_runtimes(cli):
    import importlib.util

    report = _doctor_json(cli)
    [ov] = [e for e in report["engines"] if e["engine"] == "ov"]
    assert ov["status"] != "unknown"
    if importlib.util.find_spec("openvino") is None:
        assert ov["status"] == "unavailable" and "OpenVINO is not installed" in ov["reason"] and ov["install"]
    else:
        assert ov["status"] == "available" and ov["reason"].startswith(f"OpenVINO {report['openvino']['version']}")
        assert "CPU" not in report["openvino"].get("error", "") and report["openvino"]["cpu_capabilities"]


def test_the_cuda_hint_asks_for_a_cuda_build_of_torch_only_when_this_one_is_not():
    from toolkit.usecases.doctor import cuda_hint

    assert "already a CUDA 13.0 build" in cuda_hint("13.0") and "pip" not in cuda_hint("13.0")
    assert "a CUDA build of torch in place of this CPU-only one" in cuda_hint(None)


def test_check_shows_top1_agreement_as_parity_does(cli, tmp_path):
    result = cli("doctor", "--check", "--engines", "eager", "--bench-seconds", "0.1", "-o", tmp_path / "d.json", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = [line for line in result.stdout.splitlines() if line.startswith("│ eager")][-1]  # the check's table, after the engines'
    assert "100.00%" in row
