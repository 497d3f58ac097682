"""rtk bench: the harness's fields and statistics, the JSON schema, CSV/PNG outputs, and bad input."""

from __future__ import annotations

import csv
import io
import json
import time

import jsonschema
import numpy as np
import pytest
import torch

from benchmarks.harness import BenchOptions, latency_stats, run_benchmark, time_calls
from benchmarks.report import CSV_COLUMNS, load_schema, render_table, to_csv, write_report
from engines.eager import EagerEngine
from helpers import TINY_SPEC, make_checkpoint
from toolkit.core.checkpoint import load_model
from toolkit.core.spec import Preprocess
from toolkit.usecases.bench import benchmark_model

# 16 px keeps every engine call a few milliseconds on a busy 2-core machine.
SMALL_PRE = Preprocess(input_size=(16, 16), resize=16, crop=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
FAST = dict(warmup_s=0.0, iters=3)
LATENCY_KEYS = {"mean", "std", "min", "p50", "p90", "p99", "max"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine torch's 2-thread barriers stall for whole
    scheduler slices, which makes these (speed-agnostic) tests many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A 16 px checkpoint with its ONNX beside it, which ``ensure_onnx`` then reuses.

    The TorchScript exporter without the parity check is the quick way to that file; export
    itself is tested with the exporter.
    """
    from exporters.onnx import ExportOptions, export_onnx

    path = make_checkpoint(tmp_path_factory.mktemp("bench") / "small.pth", TINY_SPEC, SMALL_PRE)
    export_onnx(path, options=ExportOptions(opset=17, exporter="torchscript", check=False))
    return path


@pytest.fixture(scope="module")
def report(small_checkpoint):
    """One real run: eager and ort (exported next to the checkpoint), two batch sizes, both I/O modes."""
    options = BenchOptions(engines=("eager", "ort", "trt"), batch_sizes=(1, 3), io="both", **FAST)
    return benchmark_model(small_checkpoint, options).to_dict()


def validate(report: dict) -> None:
    jsonschema.validate(report, load_schema(), cls=jsonschema.Draft202012Validator)


# --------------------------------------------------------------------------- the harness


def test_every_engine_batch_and_io_gets_a_row_with_every_field(report):
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert {(r["engine"], r["batch_size"], r["io"]) for r in ok} == {
        (e, b, io) for e in ("eager", "ort") for b in (1, 3) for io in ("host", "device")
    }
    for r in ok:
        lat = r["latency_ms"]
        assert set(lat) == LATENCY_KEYS
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        assert r["iterations"] == 3
        assert r["throughput_ips"] == pytest.approx(r["batch_size"] * r["iterations"] / r["timed_s"])
        assert r["threads"] == torch.get_num_threads()
        assert r["speedup_vs_eager"] > 0
        assert r["split_ms"] is None and r["peak_memory_mb"] is None  # CUDA-only figures stay empty on CPU
    for r in ok:
        if r["engine"] == "eager":
            assert r["speedup_vs_eager"] == 1.0


def test_speedup_is_throughput_over_eager_at_the_same_batch_and_io(report):
    rows = {(r["engine"], r["batch_size"], r["io"]): r for r in report["results"] if r["status"] == "ok"}
    for (engine, b, kind), r in rows.items():
        assert r["speedup_vs_eager"] == pytest.approx(r["throughput_ips"] / rows[("eager", b, kind)]["throughput_ips"])


def test_an_engine_that_cannot_run_here_is_one_skipped_row_with_the_reason(report):
    (trt,) = [r for r in report["results"] if r["engine"] == "trt"]
    assert trt["status"] == "skipped" and trt["batch_size"] is None
    assert "CUDA GPU" in trt["reason"]


def test_no_fp32_baseline_is_added_for_an_engine_that_cannot_run(report):
    assert not [r for r in report["results"] if r["engine"] == "trt-fp32"]  # trt is skipped, so is its fp32 twin
    assert report["settings"]["engines"] == ["eager", "ort", "trt"]


def test_a_reduced_precision_gets_its_ratio_to_its_own_runtimes_fp32(small_checkpoint):
    """ort-fp16 alone: eager and ort join the run, and ort-fp16's row is measured against both."""
    from benchmarks.report import render_table

    report = benchmark_model(small_checkpoint, BenchOptions(engines=("ort-fp16",), batch_sizes=(2,), **FAST)).to_dict()
    rows = {r["engine"]: r for r in report["results"]}
    assert list(rows) == ["eager", "ort", "ort-fp16"] and report["settings"]["engines"] == ["eager", "ort", "ort-fp16"]
    half = rows["ort-fp16"]
    assert half["fp32_engine"] == "ort" and half["speedup_vs_fp32"] == pytest.approx(half["throughput_ips"] / rows["ort"]["throughput_ips"])
    assert rows["ort"]["speedup_vs_fp32"] is None and rows["eager"]["fp32_engine"] is None
    validate(report)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(report))
    text = console.export_text()
    assert "vs own fp32" in text and f"{half['speedup_vs_fp32']:.2f}x ort" in text
    alone = benchmark_model(small_checkpoint, BenchOptions(engines=("ort-fp16",), batch_sizes=(2,), baseline=False, **FAST)).to_dict()
    assert [r["engine"] for r in alone["results"]] == ["ort-fp16"] and alone["results"][0]["speedup_vs_fp32"] is None


def test_each_precision_is_measured_against_its_own_runtimes_fp32_engine():
    from benchmarks.harness import fp32_counterpart
    from benchmarks.report import ratio_text
    from engines.names import parse_engines
    from toolkit.usecases.bench import with_baselines

    assert {name: fp32_counterpart(name) for name in ("ort-int8", "ov-bf16", "eager-fp16-cl", "trt", "ort-trt", "ort", "ort(peer file)")} == {
        "ort-int8": "ort", "ov-bf16": "ov", "eager-fp16-cl": "eager-cl", "trt": "trt-fp32", "ort-trt": "ort-trt-fp32", "ort": None, "ort(peer file)": None,
    }
    assert [str(c) for c in with_baselines(list(parse_engines("ort-int8,ov-int8,ort")))] == ["eager", "ort-int8", "ov", "ov-int8", "ort"]
    assert ratio_text(0.35, "ort") == "0.35x ort (slower)" and ratio_text(2.84, "ort") == "2.84x ort" and ratio_text(None, "ort") == "—"


def test_environment_records_machine_and_versions(report):
    env = report["environment"]
    assert env["cpu"]["model"] and env["cpu"]["cores"] >= 1 and env["cpu"]["threads"] >= 1
    assert env["gpu"] == {} and env["device"] == "cpu"
    versions = env["versions"]
    assert versions["torch"] == torch.__version__.split("+")[0]
    assert versions["onnxruntime"] and versions["rtk"]
    assert "tensorrt" in versions  # recorded, even as None where it is not installed
    assert report["model"]["arch"] == "resnet18-w16" and report["model"]["input_shape"] == [3, 16, 16]


def test_time_calls_times_each_call_and_syncs_around_it():
    calls, syncs = [], []

    def sleepy(ms):
        calls.append(ms)
        time.sleep(ms / 1e3)

    samples = time_calls(sleepy, 2, lambda: syncs.append(1), warmup_s=0.0, iters=4)
    assert samples.dtype == np.int64 and len(samples) == 4
    assert (samples >= 2e6).all()  # each sample covers the whole call
    assert len(calls) == 5  # one untimed warm-up call, then the timed ones
    assert len(syncs) == 1 + 2 * 4  # after the warm-up, and before and after every timed call


def test_time_budget_runs_at_least_min_iters_and_grows_its_buffer():
    samples = time_calls(lambda _: None, None, warmup_s=0.0, duration_s=0.05, min_iters=3)
    assert len(samples) > 100  # far more calls than the first estimate's buffer holds
    slow = time_calls(lambda _: time.sleep(0.02), None, warmup_s=0.0, duration_s=0.001, min_iters=3)
    assert len(slow) == 3


def test_latency_stats_on_known_samples():
    stats = latency_stats(np.arange(1, 101) * 1_000_000)  # 1..100 ms
    assert stats["min"] == 1 and stats["max"] == 100
    assert stats["p50"] == pytest.approx(50.5) and stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5)


@pytest.mark.parametrize("iters, rounds", [(4, 2), (5, 2), (7, 3)])
def test_rounds_pool_exactly_the_iterations_asked_for(small_checkpoint, iters, rounds):
    options = BenchOptions(engines=("eager",), batch_sizes=(2,), warmup_s=0.0, iters=iters, rounds=rounds)
    report = benchmark_model(small_checkpoint, options)
    (row,) = report.results
    assert row.status == "ok" and row.iterations == iters == report.settings["iters"]


class _MemoryBoundEngine(EagerEngine):
    """A real eager engine on a device that cannot hold batches above 2 (a CUDA OOM cannot happen on CPU)."""

    def _infer(self, batch):
        if batch.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._infer(batch)


def test_out_of_memory_at_one_batch_size_is_reported_and_the_sweep_goes_on(small_checkpoint):
    model, ckpt = load_model(small_checkpoint)
    engine = _MemoryBoundEngine(model, ckpt.spec, ckpt.preprocess)
    options = BenchOptions(engines=("eager",), batch_sizes=(1, 4, 2), **FAST)
    rows = run_benchmark([engine], options).results
    assert [(r.batch_size, r.status) for r in rows] == [(1, "ok"), (4, "oom"), (2, "ok")]
    assert "out of memory" in rows[1].reason


class _TwoAtMost(EagerEngine):
    """A real eager engine that takes batches of at most 2, as a static-batch ONNX or a TensorRT profile would."""

    max_batch = 2


def test_batch_larger_than_the_engine_accepts_is_a_skipped_row(small_checkpoint):
    model, ckpt = load_model(small_checkpoint)
    engine = _TwoAtMost(model, ckpt.spec, ckpt.preprocess)
    rows = run_benchmark([engine], BenchOptions(batch_sizes=(2, 8), **FAST)).results
    assert [r.status for r in rows] == ["ok", "skipped"]
    assert "batch size 8" in rows[1].reason


# --------------------------------------------------------------------------- outputs


def test_json_validates_against_the_schema(report):
    validate(report)
    json.loads(json.dumps(report, allow_nan=False))  # strict JSON: no NaN or Infinity


def test_schema_rejects_a_report_missing_figures(report):
    broken = json.loads(json.dumps(report))
    ok = next(r for r in broken["results"] if r["status"] == "ok")
    del ok["latency_ms"]["p99"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    broken = json.loads(json.dumps(report))
    next(r for r in broken["results"] if r["status"] == "ok")["throughput_ips"] = None
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_csv_parses_back_to_the_same_numbers(report):
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert len(rows) == len(report["results"])
    assert tuple(rows[0]) == CSV_COLUMNS
    for row, result in zip(rows, report["results"]):
        assert row["engine"] == result["engine"] and row["status"] == result["status"]
        if result["status"] == "ok":
            assert int(row["batch_size"]) == result["batch_size"]
            assert float(row["throughput_ips"]) == pytest.approx(result["throughput_ips"])
            assert float(row["latency_p99_ms"]) == pytest.approx(result["latency_ms"]["p99"])
        else:
            assert row["reason"] == result["reason"] and row["throughput_ips"] == ""


def test_table_shows_results_and_skip_reasons(report):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_table(report))
    text = console.export_text()
    assert "eager" in text and "ort" in text and "1.00x" in text
    assert "trt skipped" in text


def test_write_report_writes_json_csv_png(report, tmp_path):
    paths = write_report(report, tmp_path / "out", name="run")
    assert [p.name for p in paths] == ["run.json", "run.csv", "run.png"]
    validate(json.loads(paths[0].read_text()))
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


# --------------------------------------------------------------------------- the command


def test_cli_runs_and_writes_outputs(cli, small_checkpoint, tmp_path):
    result = cli("bench", small_checkpoint, "-e", "eager", "-b", "1,2", "--iters", "2", "--warmup", "0", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.json")
    assert path.name.startswith("resnet18-w16-cpu")
    data = json.loads(path.read_text())
    validate(data)
    assert [(r["engine"], r["batch_size"]) for r in data["results"]] == [("eager", 1), ("eager", 2)]
    assert data["settings"]["iters"] == 2 and data["settings"]["batch_sizes"] == [1, 2]
    assert (tmp_path / path.name.replace(".json", ".csv")).exists() and (tmp_path / path.name.replace(".json", ".png")).exists()


def test_cli_onnx_model_runs_ort_and_explains_eager(cli, report, small_checkpoint):
    onnx = small_checkpoint.with_suffix(".onnx")  # exported by the `report` fixture's run
    result = cli("bench", onnx, "-e", "ort,eager", "-b", "2", "--iters", "2", "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert "eager skipped" in result.stdout and "checkpoints" in result.stdout


@pytest.mark.parametrize("value", ["1,x", "0", "", "8,-1", "1.5", "²", "1,³", "٣"])
@pytest.mark.parametrize("flag", ["--batch-size", "--batch-sizes", "-b"])
def test_bad_batch_sizes_fail_with_one_line(cli, small_checkpoint, value, flag):
    result = cli("bench", small_checkpoint, flag, value)
    assert result.exit_code == 64  # a usage error: nothing is loaded or exported
    assert "--batch-size takes comma-separated positive integers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["-e", "tensorflow"], "unknown engine 'tensorflow'"),
        (["-e", "eager,trt-bf16"], "runs fp32, fp16 or int8, not bf16"),
        (["--device", "gpu"], "is not a device"),
        (["--duration", "2", "--iters", "5"], "not both"),
        (["--iters", "0"], "iters must be at least 1"),
        (["--threads", "0"], "threads must be at least 1"),
        (["--rounds", "0"], "rounds must be at least 1"),
        (["--iters", "2", "--rounds", "3"], "--iters 2 is fewer than --rounds 3"),
        (["--device", "cuda"], "no CUDA GPU"),
    ],
)
def test_bad_options_fail_with_one_line(cli, small_checkpoint, args, message):
    if message == "no CUDA GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = cli("bench", small_checkpoint, *args)
    # A name or value outside an option's grammar or rule, or options that exclude each other,
    # is a usage error, found before any work.
    assert result.exit_code == (1 if "CUDA" in message else 64)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.parametrize("where, message", [("file", "is a file; give a folder"), ("under_file", "cannot be created")])
def test_unusable_out_fails_before_the_sweep(cli, small_checkpoint, tmp_path, where, message):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    out = taken if where == "file" else taken / "reports"
    result = cli("bench", small_checkpoint, "-e", "eager", "-b", "1", "--iters", "2", "--warmup", "0", "--out", out)
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # the error alone: no engine was timed first
    assert "Traceback" not in result.output and taken.read_text() == "mine"


def test_missing_model_fails_with_one_line(cli, tmp_path):
    result = cli("bench", tmp_path / "nope.pth")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_latency_panel_has_a_key_that_explains_the_shaded_band(report):
    from benchmarks.report import plot

    _, latency = plot(report).axes
    labels = [t.get_text() for t in latency.get_legend().get_texts()]
    engines = {r["engine"] for r in report["results"] if r["status"] == "ok"}  # both I/O modes: "eager (host)"…
    assert all(any(label.startswith(engine) for label in labels) for engine in engines)
    assert {"p50 (median)", "p90", "p99"} <= set(labels)
    assert any(label.startswith("shaded: p50 to p99") for label in labels)
