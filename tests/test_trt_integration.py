"""TensorRT end to end: build engines of a tiny model, run them, compare with eager, refuse misuse.

Marked ``tensorrt``: skipped with the reason printed where TensorRT or a CUDA GPU is absent, or
where an installed tensorrt cannot be imported (tests/conftest.py). These are the tests that
verify TensorRT itself; tests/test_trt_fake.py runs the same code paths on a CPU against a fake.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import TINY_PRE, make_checkpoint, opened
from toolkit.core.errors import RtkError

pytestmark = pytest.mark.tensorrt

PROFILE = (1, 4, 16)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A tiny checkpoint, its fp32 and fp16 ONNX files, and an fp16 engine built from them."""
    from exporters.onnx import ExportOptions, export_onnx
    from exporters.trt import BuildOptions, build_engine

    folder = tmp_path_factory.mktemp("trt")
    checkpoint = make_checkpoint(folder / "tiny.pth")
    fp32_onnx, _ = export_onnx(checkpoint, options=ExportOptions(precision="all"))
    lo, opt, hi = PROFILE
    engine = build_engine(fp32_onnx, options=BuildOptions(min_batch=lo, opt_batch=opt, max_batch=hi), show_progress=False)
    return {"checkpoint": checkpoint, "onnx": fp32_onnx, "engine": engine}


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, *TINY_PRE.input_size)).astype(np.float32)


#: A reference top-1 leads its runner-up by at least this much (in logits) for fp16 to be held to
#: it: fp16 rounding moves these tiny models' logits by ~1e-3, so a near-tie may flip legitimately.
CLEAR_MARGIN = 0.05


def _assert_top1_agrees_where_clear(reference: np.ndarray, logits: np.ndarray) -> None:
    """Top-1 must agree on every input whose reference margin is clear; most inputs must be clear."""
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= CLEAR_MARGIN
    assert clear.mean() >= 0.5, f"only {clear.sum()} of {len(clear)} inputs have a clear top-1; the check would say little"
    disagree = np.flatnonzero(clear & (reference.argmax(1) != logits.argmax(1)))
    assert disagree.size == 0, f"top-1 differs on inputs {disagree.tolist()} although their reference margin is >= {CLEAR_MARGIN}"


def _eager(checkpoint, batch: np.ndarray) -> np.ndarray:

    with opened(checkpoint) as eager:
        return eager(batch)


def test_fp16_engine_and_sidecar(artefacts):
    import tensorrt as trt

    from toolkit.core.trt.sidecar import read_sidecar

    sidecar = read_sidecar(artefacts["engine"])
    assert artefacts["engine"].name == "tiny.engine"
    assert sidecar.precision == "fp16" and sidecar.profile == PROFILE
    assert sidecar.tensorrt_version == trt.__version__
    assert sidecar.build["route"] == ("builder-flag" if hasattr(trt.BuilderFlag, "FP16") else "fp16-onnx")
    assert sidecar.inputs[0].dtype == "float32" and sidecar.outputs[0].shape[-1] == 10
    assert sidecar.spec.arch == "resnet18" and sidecar.preprocess == TINY_PRE


def test_runs_at_batch_1_and_max_and_matches_eager(artefacts):
    from engines.trt import TrtEngine
    from toolkit.core.compare import compare

    batch = _inputs(64)
    with TrtEngine(artefacts["engine"]) as engine:
        assert (engine.min_batch, engine.max_batch) == (PROFILE[0], PROFILE[2])
        one = engine(batch[:1])
        assert one.shape == (1, 10) and one.dtype == np.float32
        logits = np.concatenate([engine(batch[i : i + PROFILE[2]]) for i in range(0, 64, PROFILE[2])])
    # The same input at batch 1 and inside a batch of 16 (different kernels) gives the same answer.
    assert compare(logits[:1], one, "fp16").min_cosine >= 0.999
    reference = _eager(artefacts["checkpoint"], batch)
    metrics = compare(reference, logits, "fp16")
    assert metrics.min_cosine >= 0.999
    _assert_top1_agrees_where_clear(reference, logits)


def test_device_tensors_in_and_out(artefacts):
    import torch

    from engines.trt import TrtEngine

    batch = _inputs(8, seed=1)
    with TrtEngine(artefacts["engine"]) as engine:
        host = engine(batch)
        out = engine.run_device(torch.from_numpy(batch).cuda())
        engine.synchronize()
        assert out.is_cuda and tuple(out.shape) == (8, 10)
        np.testing.assert_allclose(out.float().cpu().numpy(), host, rtol=1e-3, atol=1e-3)


def test_batch_above_the_profile_is_rejected(artefacts):
    from engines.trt import TrtEngine

    with TrtEngine(artefacts["engine"]) as engine:
        with pytest.raises(RtkError, match=r"batch size 17 is outside tiny.engine's optimisation profile \(1..16\)"):
            engine(_inputs(PROFILE[2] + 1))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: {**d, "tensorrt_version": "9.0.0.0"}, "cannot run here: it was built for TensorRT 9.0.0.0"),
        (lambda d: {**d, "compute_capability": "5.0"}, "compute capability 5.0"),
        (lambda d: {**d, "profile": {"min": 1, "opt": 4, "max": 64}}, "says profile"),
        (lambda d: {**d, "engine_sha256": "0" * 64}, "does not match its sidecar"),
    ],
)
def test_tampered_sidecar_is_rejected(artefacts, tmp_path, edit, message):
    from engines.trt import TrtEngine
    from toolkit.core.trt.sidecar import read_sidecar, sidecar_path, source_onnx_path

    engine = tmp_path / "copy.engine"
    engine.write_bytes(artefacts["engine"].read_bytes())
    data = json.loads(sidecar_path(artefacts["engine"]).read_text())
    source = source_onnx_path(read_sidecar(artefacts["engine"]), artefacts["engine"])
    data["onnx"] = os.path.relpath(source, tmp_path)
    sidecar_path(engine).write_text(json.dumps(edit(data)))
    with pytest.raises(RtkError, match=message):
        TrtEngine(engine)


def test_cli_build_fp32_with_timing_cache_and_layer_details(artefacts, cli, tmp_path):
    from engines.trt import TrtEngine
    from toolkit.core.compare import compare

    cache = tmp_path / "timing.cache"
    output = tmp_path / "tiny.fp32.engine"
    args = ["build", artefacts["onnx"], "--precision", "fp32", "--no-tf32", "--min-batch", "1", "--opt-batch", "2",
            "--max-batch", "8", "--timing-cache", cache, "--profiling-verbosity", "detailed", "--output", output]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert output.exists() and cache.stat().st_size > 0
    report = json.loads(cli("inspect", output, "--json").output)
    assert report["precision"] == "fp32" and report["layer_count"] >= 1 and report["this_machine"].startswith("can run")
    assert any("type" in layer for layer in report["layers"])
    again = cli(*args)  # reads the cache it wrote, then updates it
    assert again.exit_code == 0, again.stderr
    batch = _inputs(8, seed=2)
    with TrtEngine(output) as engine:
        assert engine.name == "trt-fp32"
        reference, logits = _eager(artefacts["checkpoint"], batch), engine(batch)
    assert compare(reference, logits, "fp32").min_cosine >= 0.99999
    _assert_top1_agrees_where_clear(reference, logits)


def test_loader_builds_once_then_reuses_the_engine(artefacts, tmp_path):
    import shutil

    checkpoint = shutil.copy(artefacts["checkpoint"], tmp_path / "tiny.pth")
    with opened(checkpoint, engine="trt") as engine:
        assert engine.name == "trt" and engine.precision == "fp16"
    built = tmp_path / "tiny.engine"
    stamp = built.stat().st_mtime_ns
    with opened(checkpoint, engine="trt"):
        pass
    assert built.stat().st_mtime_ns == stamp


def test_parser_errors_are_all_reported(tmp_path, cli):
    import onnx
    from onnx import TensorProto, helper

    from helpers import TINY_SPEC
    from toolkit.core.spec import METADATA_KEY, ArtefactMeta

    # A node type no parser knows: TensorRT must say which node and why, not just "failed".
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="rtk.test")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("rtk.test", 1)])
    helper.set_model_props(model, {METADATA_KEY: ArtefactMeta(TINY_SPEC, TINY_PRE).to_json()})
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    result = cli("build", path, "--precision", "fp32")
    assert result.exit_code == 1 and "ONNX parser rejected" in result.stderr and "mystery" in result.stderr
    assert not list(tmp_path.glob("*.engine*"))


def test_parity_refuses_an_engine_of_another_model(artefacts, tmp_path, cli):
    from exporters.onnx import ExportOptions, export_onnx
    from exporters.trt import BuildOptions, build_engine
    from toolkit.core.spec import ModelSpec

    other = make_checkpoint(tmp_path / "five.pth", ModelSpec(arch="resnet18", num_classes=5, stem="small", width=16))
    (onnx_path,) = export_onnx(other, options=ExportOptions(check=False))
    engine = build_engine(onnx_path, options=BuildOptions(min_batch=1, opt_batch=2, max_batch=4), show_progress=False)
    result = cli("parity", artefacts["checkpoint"], "--engines", "eager,trt", "--trt-engine", engine)
    assert result.exit_code == 1 and "has 5 classes but the checkpoint" in result.stderr
