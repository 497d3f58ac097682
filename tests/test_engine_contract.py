"""One contract, every engine this machine can run: shapes, dtypes, batch sizes 1..N, bad input."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_PRE, TINY_SPEC, make_checkpoint, make_qdq_onnx, opened, prepared
from toolkit.core.errors import RtkError, install_hint

# The suite's tiny model, whose exports the session makes once (conftest.ExportedModels).
SPEC, PRE = TINY_SPEC, TINY_PRE


def _ort_has(provider: str) -> bool:
    if not importlib.util.find_spec("onnxruntime"):
        return False
    import onnxruntime as ort

    return provider in ort.get_available_providers()


def _ov_has(capability: str) -> bool:
    if not importlib.util.find_spec("openvino"):
        return False
    from engines.openvino import cpu_capabilities

    return capability in cpu_capabilities()


cuda = pytest.mark.cuda
openvino = pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason=f"openvino is not installed ({install_hint('openvino')})")
# (engine id, how to open it from the artefacts, tolerance against eager fp32 as (atol, rtol))
ENGINES = [
    pytest.param("eager", lambda a: opened(a["ckpt"]), (1e-5, 1e-5), id="eager"),
    pytest.param("eager-cl", lambda a: opened(a["ckpt"], "eager-cl"), (1e-4, 1e-4), id="eager-cl"),
    pytest.param("eager-bf16", lambda a: opened(a["ckpt"], precision="bf16"), (0.1, 0.1), id="eager-bf16"),
    pytest.param("ort", lambda a: opened(a["onnx"]), (1e-4, 1e-4), id="ort"),
    pytest.param("ort-fp16", lambda a: opened(a["onnx16"], engine="ort-fp16"), (2e-2, 2e-2), id="ort-fp16"),
    pytest.param("ov", lambda a: opened(a["onnx"], engine="ov"), (1e-4, 1e-4), id="ov", marks=openvino),
    pytest.param(
        "ov-bf16", lambda a: opened(a["onnx"], engine="ov-bf16"), (0.1, 0.1), id="ov-bf16",
        marks=[openvino, pytest.mark.skipif(not _ov_has("BF16"), reason="this CPU has no bf16 units")],
    ),
    pytest.param(
        "ov-fp16", lambda a: opened(a["onnx"], engine="ov-fp16"), (2e-2, 2e-2), id="ov-fp16",
        marks=[openvino, pytest.mark.skipif(not _ov_has("FP16"), reason="this CPU has no fp16 units")],
    ),
    # The QDQ file: per-channel int8 weights, uint8 activations calibrated on the same kind of inputs.
    pytest.param("ov-int8", lambda a: opened(a["int8"], engine="ov-int8"), (3e-2, 1e-1), id="ov-int8", marks=openvino),
    pytest.param("eager-cuda", lambda a: opened(a["ckpt"], device="cuda"), (1e-3, 1e-3), id="eager-cuda", marks=cuda),
    pytest.param(
        "ort-cuda", lambda a: opened(a["onnx"], engine="ort-cuda", device="cuda"), (1e-3, 1e-3), id="ort-cuda",
        marks=[cuda, pytest.mark.skipif(not _ort_has("CUDAExecutionProvider"), reason="onnxruntime-gpu is not installed")],
    ),
    pytest.param(
        "ort-trt", lambda a: opened(a["onnx"], engine="ort-trt", device="cuda"), (2e-2, 2e-2), id="ort-trt",
        marks=[cuda, pytest.mark.skipif(not _ort_has("TensorrtExecutionProvider"), reason="onnxruntime-gpu with TensorRT is not installed")],
    ),
    # Built from the fp32 ONNX next to the checkpoint with the default profile (batch 1..128).
    pytest.param("trt", lambda a: opened(a["onnx"], engine="trt", device="cuda"), (2e-2, 2e-2), id="trt", marks=pytest.mark.tensorrt),
]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, exported_models):
    folder = tmp_path_factory.mktemp("contract")
    files = exported_models(folder, SPEC, PRE, ("fp32", "fp16"))
    ckpt, onnx, onnx16 = files["ckpt"], files["fp32"], files["fp16"]
    calibration = np.random.default_rng(1).standard_normal((16, 3, 32, 32), dtype=np.float32)
    int8 = make_qdq_onnx(onnx, folder / "m.int8.onnx", calibration)
    return {"ckpt": ckpt, "onnx": onnx, "onnx16": onnx16, "int8": int8}


def _copy(artefacts, folder, *keys):
    """Copies of the module's artefacts in ``folder``, under their own names."""
    import shutil

    return [Path(shutil.copy2(artefacts[k], folder / artefacts[k].name)) for k in keys]


@pytest.fixture(scope="module")
def reference(artefacts):
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32), dtype=np.float32)
    with opened(artefacts["ckpt"]) as eager:
        return x, eager(x)


@pytest.mark.parametrize("name, opener, tol", ENGINES)
def test_engine_contract(name, opener, tol, artefacts, reference):
    _check_contract(name, lambda: opener(artefacts), tol, reference)


def test_trt_engine_contract_on_the_fake_tensorrt(fake_trt, artefacts, reference, tmp_path):
    """rtk's TrtEngine through the same contract, on the recording fake (rtk's logic, not TensorRT's)."""
    from exporters.trt import BuildOptions, build_engine

    engine = build_engine(artefacts["onnx"], tmp_path / "m.fp32.engine", BuildOptions(precision="fp32", opt_batch=4, max_batch=8), show_progress=False)
    _check_contract("trt-fp32", lambda: opened(engine, device="cuda"), (1e-4, 1e-4), reference)


def _check_contract(name, opener, tol, reference):
    x, expected = reference
    with opener() as engine:
        # A GPU runtime names its precision when it is not the artefact's (ort-trt runs fp16 kernels).
        assert engine.name in (name, name.replace("-cuda", ""), f"{name}-fp16")
        # Its identity is set once, by its constructor: a report row names what really ran.
        for field in ("name", "precision", "min_batch", "max_batch", "fell_back_from"):
            with pytest.raises(AttributeError):
                setattr(engine, field, None)
        assert engine.spec == SPEC and engine.preprocess == PRE and engine.input_shape == (3, 32, 32)
        for n in range(1, len(x) + 1):  # batch sizes 1..N
            out = engine(x[:n])
            assert out.shape == (n, 10) and out.dtype == np.float32
            np.testing.assert_allclose(out, expected[:n], atol=tol[0], rtol=tol[1])
        device_out = engine(torch.from_numpy(x[:2]))  # a torch tensor goes through run_device
        assert device_out.shape == (2, 10) and device_out.dtype == np.float32
        on_device = engine.run_device(torch.from_numpy(x[:3]))
        assert tuple(on_device.shape) == (3, 10)
        np.testing.assert_allclose(on_device.float().cpu().numpy(), expected[:3], atol=tol[0], rtol=tol[1])
        for bad, message in [
            (torch.zeros(1, 3, 16, 16), "expects inputs of shape"),
            (torch.zeros(3, 32, 32), "4 dimensions"),
            (torch.zeros(1, 3, 32, 32, dtype=torch.int64), "floating-point"),
            (x[:1], "expects a torch tensor"),
        ]:
            with pytest.raises(RtkError, match=message):
                engine.run_device(bad)

        for bad, message in [
            (x[0], "4 dimensions"),
            (np.zeros((1, 1, 32, 32), np.float32), "expects inputs of shape"),
            (np.zeros((1, 3, 16, 16), np.float32), "expects inputs of shape"),
            (x.astype(np.float64), "float32"),
            (x.tolist(), "numpy array or torch tensor"),
        ]:
            with pytest.raises(RtkError, match=message):
                engine(bad)
    with pytest.raises(RtkError, match="closed"):
        engine(x)
    with pytest.raises(RtkError, match="closed"):
        engine.run_device(torch.from_numpy(x))


def test_gpu_engines_fall_back_to_cpu_loudly(artefacts, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here; there is nothing to fall back from")
    with opened(artefacts["onnx"], engine="ort-cuda") as engine:
        # The name says what runs, so a report row can be asked for again; what was asked for is a field.
        assert engine.name == "ort" and engine.fell_back_from == "ort-cuda" and engine.device == "cpu"
    err = capsys.readouterr().err
    # Only the CPU build is installed here: the hint replaces it instead of installing beside it.
    assert "running m.onnx on the CPU instead" in err
    assert f"pip uninstall -y onnxruntime && {install_hint('gpu')}" in err


def test_two_onnxruntime_distributions_are_named_with_the_fix(artefacts, capsys, monkeypatch, tmp_path):
    # onnxruntime-gpu installed beside onnxruntime: the same module, files overwritten by whichever
    # came last. Its installed metadata (a real dist-info folder on sys.path) is what rtk reads.
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    info = tmp_path / "onnxruntime_gpu-1.31.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with opened(artefacts["onnx"], engine="ort-cuda") as engine:
        assert engine.device == "cpu"
    err = capsys.readouterr().err
    assert "onnxruntime-gpu 1.31.1 are installed together" in err and "onnxruntime " in err
    assert f"pip uninstall -y onnxruntime onnxruntime-gpu && {install_hint('gpu')}" in err
    assert err.count(install_hint("gpu")) == 1 and len(err.strip().splitlines()) == 1  # the fix, said once


def test_a_gpu_provider_that_fails_to_start_is_not_passed_off_as_gpu(artefacts, capsys, monkeypatch):
    # onnxruntime-gpu installed without working CUDA libraries lists the provider, but the session
    # it creates runs on the CPU. The real CPU-only session here behaves exactly that way once the
    # provider is listed.
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning, match="not in available provider names"):  # the CPU-only session's own complaint
        engine = opened(artefacts["onnx"], engine="ort-cuda", device="cuda")
    with engine:
        assert engine.name == "ort" and engine.device == "cpu" and engine.fell_back_from == "ort-cuda"
        assert engine(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    err = capsys.readouterr().err
    assert "CUDAExecutionProvider failed to start" in err and "running m.onnx on the CPU instead" in err


def test_ort_tensorrt_provider_options(tmp_path):
    # The TensorRT provider's profile names the graph's own input and spans the batch range, and
    # its engine and timing caches live in one folder beside the model, so they are reused.
    from engines.ort import _provider_options
    from toolkit.core.onnx_graph import ClassifierGraph
    from toolkit.core.spec import ArtefactMeta

    graph = ClassifierGraph(ArtefactMeta(SPEC, PRE), "images", "fp32", None)
    options = _provider_options("trt", tmp_path / "m.onnx", graph, 1, "fp16", 64)
    cache = tmp_path / "m.ort-trt-cache"
    assert cache.is_dir() and options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is False and options["device_id"] == 1
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) == (
        "images:1x3x32x32", "images:32x3x32x32", "images:64x3x32x32",
    )
    # A QDQ graph: TensorRT's INT8 mode on (its scales come from the graph), fp16 for the float layers.
    int8 = _provider_options("trt", tmp_path / "m.onnx", graph, 0, "int8", 64)
    assert int8["trt_int8_enable"] is True and int8["trt_fp16_enable"] is True
    assert _provider_options("cuda", tmp_path / "m.onnx", graph, 0, "fp32", 64)["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "m.ort-trt-cache").write_text("a file where the cache folder goes")
    with pytest.raises(RtkError, match="cannot create the TensorRT provider's cache folder"):
        _provider_options("trt", tmp_path / "ro" / "m.onnx", graph, 0, "fp16", 64)


def test_prepare_exports_next_to_the_checkpoint_and_reuses_it_while_the_hash_matches(tmp_path, exported_models):

    # A checkpoint with its fp16 ONNX beside it, and no fp32 one yet.
    ckpt = exported_models(tmp_path, SPEC, PRE, ("fp16",))["ckpt"]
    fp16_stamp = (tmp_path / "m.fp16.onnx").stat().st_mtime_ns
    assert prepared(ckpt) == ckpt and prepared(ckpt, "eager-fp16") == ckpt
    onnx = prepared(ckpt, "ort")
    assert onnx == tmp_path / "m.onnx" and onnx.exists()
    stamp = onnx.stat().st_mtime_ns
    assert prepared(ckpt, "ort-cuda") == onnx and onnx.stat().st_mtime_ns == stamp  # cached, not re-exported
    ckpt.touch()  # a newer file with the same weights is not a reason to export again
    assert prepared(ckpt, "ort-trt-fp32") == onnx and onnx.stat().st_mtime_ns == stamp
    assert prepared(ckpt, "ort-fp16") == tmp_path / "m.fp16.onnx" and (tmp_path / "m.fp16.onnx").stat().st_mtime_ns == fp16_stamp
    assert prepared(ckpt, "ort", "fp16") == prepared(ckpt, "ort-cuda-fp16") == tmp_path / "m.fp16.onnx"
    assert prepared(onnx, "ort") == onnx  # an ONNX runs as given
    make_checkpoint(ckpt, SPEC, PRE, seed=1)  # other weights under the same name: exported again
    assert prepared(ckpt, "ort") == onnx and onnx.stat().st_mtime_ns != stamp


def test_prepare_never_overwrites_a_file_it_did_not_export(artefacts, tmp_path):
    import onnx

    ckpt, mine = _copy(artefacts, tmp_path, "ckpt", "onnx")
    assert prepared(ckpt, "ort") == mine  # rtk's own export, fresh: used as it is
    model = onnx.load(str(mine))
    del model.metadata_props[:]
    onnx.save(model, str(mine))
    before = mine.read_bytes()
    with pytest.raises(RtkError, match="was not exported by rtk, so it is not overwritten"):
        prepared(ckpt, "ort")
    assert mine.read_bytes() == before


def test_open_engine_runs_a_checkpoint_on_any_engine_the_same_way(artefacts, tmp_path):

    ckpt, *_ = _copy(artefacts, tmp_path, "ckpt", "onnx", "onnx16")  # the exports next to it are fresh
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with opened(ckpt) as eager:
        expected = eager(x)
    for name in ("ort", "ort-fp16", "eager-cl"):
        with opened(ckpt, name) as engine:
            assert engine.name == name and engine.precision == ("fp16" if name == "ort-fp16" else "fp32")
            np.testing.assert_allclose(engine(x), expected, atol=2e-2, rtol=2e-2)
    with opened(tmp_path / "m.fp16.onnx") as engine:  # precision read from the graph, whatever the name
        assert engine.name == "ort-fp16"


def test_engines_refuse_what_they_cannot_run(artefacts, tmp_path):

    with pytest.raises(RtkError, match="the eager engine runs checkpoints"):
        opened(artefacts["onnx"], "eager")
    with pytest.raises(RtkError, match="holds fp32 weights, so ONNX Runtime runs it at fp32, not fp16"):
        opened(artefacts["onnx"], "ort", precision="fp16")
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\0" * 64)
    with pytest.raises(RtkError, match="the ort engine runs ONNX files"):
        opened(plan, "ort")
    with pytest.raises(RtkError, match="unknown engine"):
        opened(artefacts["ckpt"], "tvm")
    assert not list(artefacts["ckpt"].parent.glob("*.engine*"))


def test_open_engine_refuses_what_the_engine_cannot_run(artefacts):
    with pytest.raises(RtkError, match="the eager engine runs checkpoints"):
        opened(artefacts["onnx"], engine="eager")
    with pytest.raises(RtkError, match="holds fp32 weights"):
        opened(artefacts["onnx"], engine="ort-fp16")
    with pytest.raises(RtkError, match="holds fp16 weights"):
        opened(artefacts["onnx16"], engine="ort-fp32")
    with pytest.raises(RtkError, match="unknown engine"):
        opened(artefacts["onnx"], engine="tvm")
    with pytest.raises(RtkError, match="eager engine runs fp32, fp16 or bf16, not int8"):
        opened(artefacts["ckpt"], precision="int8")


def test_foreign_onnx_needs_the_spec_from_its_checkpoint(artefacts, tmp_path):
    import onnx

    from toolkit.core.checkpoint import load_checkpoint
    from toolkit.core.spec import ArtefactMeta

    model = onnx.load(str(artefacts["onnx"]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(RtkError, match="carries no rtk metadata"):
        opened(bare)
    ckpt = load_checkpoint(artefacts["ckpt"])
    with opened(bare, meta=ArtefactMeta(ckpt.spec, ckpt.preprocess)) as engine:
        assert engine(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
