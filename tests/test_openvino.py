"""OpenVINO engines: what each name runs, precision refusals, threads, the compiled-model cache,
int8 files made next to the checkpoint, and a clear line when openvino is not installed."""

import importlib.util
import sys

import numpy as np
import pytest

from helpers import TINY_PRE, TINY_SPEC, make_checkpoint, make_qdq_onnx, opened, prepared
from toolkit.core.compare import compare
from toolkit.core.errors import RtkError, install_hint

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason=f"openvino is not installed ({install_hint('openvino')})")

# The suite's tiny model, whose exports the session makes once (conftest.ExportedModels).
SPEC, PRE = TINY_SPEC, TINY_PRE


@pytest.fixture(scope="module")
def model(tmp_path_factory, exported_models):
    """A checkpoint, its fp32 ONNX and a QDQ int8 ONNX next to it, and eager's logits on a batch."""
    folder = tmp_path_factory.mktemp("ov")
    files = exported_models(folder, SPEC, PRE, ("fp32", "fp16"))  # m.onnx, as open_engine would export it
    ckpt, onnx = files["ckpt"], files["fp32"]
    calibration = np.random.default_rng(1).standard_normal((16, 3, 32, 32), dtype=np.float32)
    int8 = make_qdq_onnx(onnx, folder / "m.int8.onnx", calibration)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with opened(ckpt) as eager:
        expected = eager(x)
    return {"ckpt": ckpt, "onnx": onnx, "fp16": files["fp16"], "int8": int8, "x": x, "expected": expected}


def test_a_checkpoint_runs_on_ov_from_its_fp32_onnx_and_on_ov_int8_from_its_int8_onnx(model):

    assert prepared(model["ckpt"], "ov") == prepared(model["ckpt"], "ov-bf16") == model["onnx"]
    assert prepared(model["ckpt"], "ov-int8") == prepared(model["ckpt"], "ov", "int8") == model["int8"]
    with opened(model["ckpt"], "ov") as ov:
        assert ov.name == "ov" and ov.precision == "fp32" and ov.path == model["onnx"]
        assert compare(model["expected"], ov(model["x"]), "fp32").passed
    with opened(model["ckpt"], "ov-int8") as ov8:
        assert ov8.name == "ov-int8" and ov8.precision == "int8" and ov8.path == model["int8"]
        int8 = ov8(model["x"])
    # A random-weight network's logits are all near zero, so int8's rounding weighs more here than
    # on a trained one (judged with the default int8 tolerance on real images in test_parity).
    against_eager = compare(model["expected"], int8, "int8")
    assert against_eager.min_cosine > 0.95 and against_eager.max_abs < 0.15 * against_eager.scale
    with opened(model["int8"]) as ort:  # ONNX Runtime on the same QDQ file
        against_ort = compare(ort(model["x"]), int8, "int8")
    assert against_ort.min_cosine > 0.95 and against_ort.max_abs < 0.15 * against_ort.scale
    with opened(model["int8"], "ov") as named:  # a QDQ file named directly runs at int8 on ov
        assert named.name == "ov-int8"


def test_ov_int8_from_a_checkpoint_needs_its_int8_onnx_made_from_the_same_weights(tmp_path, model):
    import shutil

    ckpt = make_checkpoint(tmp_path / "fresh.pth", SPEC, PRE, seed=1)
    with pytest.raises(RtkError, match=rf"fresh.int8.onnx does not exist, and an int8 file cannot be made without calibration images; run rtk export {ckpt} --precision int8 --calib"):
        opened(ckpt, "ov-int8")
    shutil.copy(model["int8"], tmp_path / "fresh.int8.onnx")  # quantized from m.pth's export, which records m.pth's sha256
    with pytest.raises(RtkError, match="fresh.int8.onnx was made from other weights, and an int8 file cannot be made without calibration images; run rtk export"):
        opened(ckpt, "ov-int8")
    assert not (tmp_path / "fresh.onnx").exists()  # refused before anything was exported


def test_precisions_a_file_or_this_cpu_cannot_run_are_refused(model):
    from engines.openvino import cpu_capabilities

    with pytest.raises(RtkError, match="m.onnx holds no quantized ops, so ov-int8 cannot run it; make the int8 ONNX with `rtk export"):
        opened(model["onnx"], "ov-int8")
    with pytest.raises(RtkError, match="is a quantized \\(QDQ\\) ONNX, so OpenVINO runs it at int8, not bf16"):
        opened(model["int8"], "ov-bf16")
    with pytest.raises(RtkError, match="holds fp16 weights; OpenVINO reduces precision itself, so give it the fp32 ONNX"):
        opened(model["fp16"], "ov")
    missing = [p for p, unit in (("fp16", "FP16"), ("bf16", "BF16")) if unit not in cpu_capabilities()]
    if not missing:
        pytest.skip("this CPU has both bf16 and fp16 units; there is nothing to refuse")
    for precision in missing:
        with pytest.raises(RtkError, match=f"this CPU has no {precision} units .*run ov for fp32"):
            opened(model["onnx"], f"ov-{precision}")


def test_threads_reach_openvino_and_the_compiled_model_is_cached_next_to_the_onnx(model):

    with opened(model["onnx"], "ov", threads=1) as one:
        assert one.threads == 1
        assert one.cache_dir == model["onnx"].with_name("m.ov-cache") and any(one.cache_dir.iterdir())
        first = one(model["x"])
    blobs = sorted(p.name for p in model["onnx"].with_name("m.ov-cache").iterdir())
    with opened(model["onnx"], "ov", threads=1) as again:  # the same model and settings: the blob is reused
        np.testing.assert_array_equal(again(model["x"]), first)
    assert sorted(p.name for p in model["onnx"].with_name("m.ov-cache").iterdir()) == blobs


def test_a_cache_folder_that_cannot_be_made_only_costs_compile_time(model, tmp_path):
    import shutil

    onnx = shutil.copy(model["onnx"], tmp_path / "m.onnx")
    (tmp_path / "m.ov-cache").write_text("a file where the cache folder goes")
    with opened(onnx, "ov") as ov:
        assert ov.cache_dir is None
        assert compare(model["expected"], ov(model["x"]), "fp32").passed


def test_throughput_hint_splits_a_batch_over_its_requests(model):
    from engines.openvino import THROUGHPUT_MIN_BATCH, OvEngine

    with OvEngine(model["onnx"], performance_hint="throughput", threads=2) as ov:
        assert ov.requests_for(1) is ov.requests_for(4) and len(ov.requests_for(4)) >= 1
        for n in (4, 1, 3, 4):  # a smaller batch after a larger one and the reverse, on the same requests
            np.testing.assert_allclose(ov(model["x"][:n]), model["expected"][:n], atol=1e-4, rtol=1e-4)
    with OvEngine(model["onnx"], threads=2) as auto:  # the default: latency for small batches, streams for large ones
        assert auto.performance_hint == "auto" and len(auto.requests_for(1)) == 1
        assert auto.requests_for(THROUGHPUT_MIN_BATCH - 1) is auto.requests_for(1)
        large = auto.requests_for(THROUGHPUT_MIN_BATCH)
        assert large is not auto.requests_for(1) and large is auto.requests_for(THROUGHPUT_MIN_BATCH + 8)
        for n in (1, 4, 2, 4):
            np.testing.assert_allclose(auto(model["x"][:n]), model["expected"][:n], atol=1e-4, rtol=1e-4)
    with pytest.raises(RtkError, match="performance hint must be one of auto, latency, throughput, got .fast."):
        OvEngine(model["onnx"], performance_hint="fast")


def test_without_openvino_the_ov_engines_say_how_to_install_it(model, monkeypatch, cli):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an environment without the package imports
    with pytest.raises(RtkError, match=r"openvino is needed for the ov engine but is not installed") as raised:
        opened(model["onnx"], "ov")
    assert str(raised.value).endswith(f"install it with: {install_hint('openvino')}")
    result = cli("parity", model["ckpt"], "-e", "ov")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output
    assert "ov needs OpenVINO, which is not installed" in errors[0] and install_hint("openvino") in errors[0]


def test_parity_judges_ov_as_fp32(model, cli, tmp_path):
    import json

    report_path = tmp_path / "parity.json"
    result = cli("parity", model["ckpt"], "-e", "ov", "-b", "1,4", "--json", report_path)
    assert result.exit_code == 0, result.output
    (ov,) = json.loads(report_path.read_text())["engines"]
    assert ov["precision"] == "fp32" and ov["random"]["max_abs"] < 1e-4 and ov["random"]["top1_agreement"] == 1.0
    assert ov["artefact"].endswith("m.onnx")


def test_bench_runs_ov_with_the_threads_asked_for(model, cli):
    result = cli("bench", model["ckpt"], "-e", "ov,ov-int8", "-b", "2", "--iters", "2", "--warmup", "0", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "ov-int8" in result.stdout and "skipped" not in result.stdout


def test_one_bench_run_times_every_cpu_engine_each_under_its_own_name(model, cli, tmp_path):
    """The interleaved CPU comparison of benchmarks/results is a plain `rtk bench`: every row names
    an engine that can be asked for again, the int8 file on ONNX Runtime and OpenVINO's hints included."""
    import json

    engines = "eager,ort,ov,ov-int8,ort-int8,ov-int8-latency"
    result = cli(
        "bench", model["ckpt"], "-e", engines, "-b", "2", "--rounds", "1", "--warmup", "0", "--duration", "0.05",
        "--threads", "1", "--out", tmp_path, "--name", "cpu",
    )
    assert result.exit_code == 0, result.output
    rows = {r["engine"]: r for r in json.loads((tmp_path / "cpu.json").read_text())["results"]}
    expected = set(engines.split(","))
    assert expected <= set(rows) and all(rows[name]["status"] == "ok" and rows[name]["throughput_ips"] > 0 for name in expected)
    assert rows["ort-int8"]["precision"] == rows["ov-int8"]["precision"] == rows["ov-int8-latency"]["precision"] == "int8"
    assert (tmp_path / "cpu.csv").exists() and (tmp_path / "cpu.png").exists()


def test_predict_classifies_real_images_on_ov_int8_like_on_ov(model, cli, tmp_path):
    import json

    from toolkit.core.data import write_digit_images

    write_digit_images(tmp_path / "digits", per_class=1)
    rows = {}
    for name in ("ov", "ov-int8"):
        result = cli("predict", tmp_path / "digits", "--model", model["ckpt"], "-e", name, "--recursive", "--format", "json")
        assert result.exit_code == 0, result.output
        rows[name] = [(r["path"], r["error"]) for r in json.loads(result.stdout)["predictions"]]
    assert len(rows["ov"]) == 10 and rows["ov"] == rows["ov-int8"] and all(error is None for _, error in rows["ov"])
