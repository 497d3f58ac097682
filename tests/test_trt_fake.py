"""rtk's TensorRT code paths executed on a CPU against the recording fake ``tensorrt``
(:mod:`fake_tensorrt`), once as TensorRT 10.13 and once as 11.4.

These test rtk's logic (which calls it makes, what it checks, what it says on failure) against
TensorRT's documented behaviour. They are not verification of TensorRT: that needs a GPU and
``pytest -m tensorrt`` (tests/test_trt_integration.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.trt import BuildOptions, build_engine, ensure_engine
from helpers import TINY_PRE, TINY_SPEC, opened
from toolkit.core.errors import RtkError
from toolkit.core.spec import METADATA_KEY, ArtefactMeta
from toolkit.core.trt.sidecar import read_sidecar, rebuild_command

API_NAMES = Path(__file__).parent / "data" / "tensorrt_api"
PROFILE = (1, 4, 8)
OPTIONS = BuildOptions(min_batch=1, opt_batch=4, max_batch=8)


def classifier_onnx(path: Path, precision: str = "fp32", seed: int = 0) -> Path:
    """A small real NCHW classifier (Conv → ReLU → global pool → Gemm) with rtk metadata.

    fp16 keeps float32 I/O and casts at the boundary, as ``rtk export --precision fp16`` does.
    """
    rng = np.random.default_rng(seed)
    dtype = np.float16 if precision == "fp16" else np.float32
    onnx_type = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(dtype), "conv_w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(dtype), "conv_b"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(dtype), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(10).astype(dtype), "fc_b"),
    ]
    nodes = [helper.make_node("Cast", ["input"], ["x"], to=onnx_type)]
    nodes += [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["z"], transB=1),
        helper.make_node("Cast", ["z"], ["logits"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: ArtefactMeta(TINY_SPEC, TINY_PRE).to_json()})
    onnx.save(model, str(path))
    return path


@pytest.fixture
def onnx_files(tmp_path):
    """``tiny.onnx`` (fp32) and ``tiny.fp16.onnx`` side by side, as `rtk export --precision all` leaves them."""
    return classifier_onnx(tmp_path / "tiny.onnx"), classifier_onnx(tmp_path / "tiny.fp16.onnx", "fp16")


def _batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _ort(path: Path, batch: np.ndarray) -> np.ndarray:
    from engines.ort import OrtEngine

    with OrtEngine(path) as engine:
        return engine(batch)


def _build(onnx_path: Path, **changes) -> Path:
    import dataclasses

    return build_engine(onnx_path, options=dataclasses.replace(OPTIONS, **changes), show_progress=False)


# --- the fake's surface is the real API's ---------------------------------------------------


def _fake_names(trt) -> set[str]:
    """``Class.member`` for every public class and member the fake module exposes."""
    import enum

    names = {"__version__"}
    for cls_name, cls in vars(trt).items():
        if cls_name.startswith("_") or not isinstance(cls, type):
            continue
        names.add(cls_name)
        if issubclass(cls, enum.Enum):
            names.update(f"{cls_name}.{member}" for member in cls.__members__)
            continue
        # A type bound to its flavour is a subclass of the fake's own: its members are its bases'.
        members = {attr: value for klass in reversed(cls.__mro__[:-1]) for attr, value in vars(klass).items()}
        for attr, value in members.items():
            if attr.startswith("_"):
                continue
            names.add(f"{cls_name}.{attr}")
            if isinstance(value, type) and issubclass(value, enum.Enum):
                names.update(f"{cls_name}.{attr}.{member}" for member in value.__members__)
    return names


def _api_lines(name: str) -> list[str]:
    return [line for line in (API_NAMES / name).read_text().splitlines() if line and not line.startswith("#")]


def test_every_name_the_fake_exposes_exists_in_the_real_api(fake_trt):
    names = _fake_names(fake_trt)
    assert {"Builder", "Runtime", "OnnxParser", "ICudaEngine.create_execution_context", "IExecutionContext.set_tensor_address"} <= names
    if fake_trt.__version__.startswith("10."):
        missing = names - set(_api_lines("tensorrt-10.13.txt"))
    else:
        real = _api_lines("tensorrt-11.4.txt")
        # The 11.4 list is flat (no owning class), and a string ending another is stored once;
        # __version__ is set by the wheel's tensorrt_bindings/__init__.py, not the binary.
        missing = {n for n in names - {"__version__"} if not any(line.endswith(n.split(".")[-1]) for line in real)}
    assert not missing, f"the fake exposes names TensorRT {fake_trt.__version__} does not have: {sorted(missing)}"


def test_the_11_flavour_lacks_what_tensorrt_11_removed(fake_trt):
    ten = fake_trt.__version__.startswith("10.")
    assert hasattr(fake_trt.BuilderFlag, "FP16") is ten
    assert hasattr(fake_trt.BuilderFlag, "INT8") is ten
    assert hasattr(fake_trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") is ten


# --- build ----------------------------------------------------------------------------------


def test_fp16_build_route_per_version(fake_trt, onnx_files):
    fp32, fp16 = onnx_files
    engine = _build(fp32)
    sidecar = read_sidecar(engine)
    build = fake_trt._fake.called("build_serialized_network")[-1]
    if fake_trt.__version__.startswith("10."):
        assert sidecar.build["route"] == "builder-flag" and sidecar.onnx == "tiny.onnx"
        assert build == {"fp16_flag": True, "strongly_typed": False}
    else:
        assert sidecar.build["route"] == "fp16-onnx" and sidecar.onnx == "tiny.fp16.onnx"
        assert build == {"fp16_flag": False, "strongly_typed": True}
    assert sidecar.tensorrt_version == fake_trt.__version__ and sidecar.profile == PROFILE
    assert sidecar.inputs[0].name == "input" and sidecar.outputs[0].shape == (-1, 10)


def test_fp32_build_and_run_gives_the_onnx_models_answers(fake_trt, onnx_files):
    from engines.trt import TrtEngine

    fp32, _ = onnx_files
    engine = _build(fp32, precision="fp32", tf32=False)
    assert ("clear_flag", "TF32") in fake_trt._fake.calls
    batch = _batch(8)
    with TrtEngine(engine) as trt:
        assert (trt.name, trt.precision, trt.device) == ("trt-fp32", "fp32", "cuda:0")
        one, full = trt(batch[:1]), trt(batch)
    expected = _ort(fp32, batch)
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one, expected[:1], rtol=1e-5, atol=1e-5)


def test_parser_errors_are_all_listed(fake_trt, onnx_files):
    fake_trt._fake.fail.add("parse")
    with pytest.raises(RtkError, match=r"2 error\(s\): \(1\) UNSUPPORTED_NODE at node 'fancy_0'.*\(2\) INVALID_GRAPH"):
        _build(onnx_files[0], precision="fp32")


def test_a_failed_build_says_why_and_leaves_nothing(fake_trt, onnx_files):
    fake_trt._fake.fail.add("build")
    with pytest.raises(RtkError, match="could not build an engine.*no kernel fits the workspace limit"):
        _build(onnx_files[0], precision="fp32")
    assert not list(onnx_files[0].parent.glob("*.engine*"))


def test_a_refused_optimisation_profile_is_an_error(fake_trt, onnx_files):
    fake_trt._fake.fail.add("profile")
    with pytest.raises(RtkError, match="refused the batch profile 1/4/8 for .*'input'.*min <= opt <= max"):
        _build(onnx_files[0], precision="fp32")
    assert not fake_trt._fake.called("build_serialized_network")


def test_timing_cache_is_written_then_reused(fake_trt, onnx_files, tmp_path):
    cache = tmp_path / "timing.cache"
    _build(onnx_files[0], precision="fp32", timing_cache=cache)
    assert cache.is_file()
    _build(onnx_files[0], precision="fp32", timing_cache=cache)
    assert fake_trt._fake.called("set_timing_cache") == [0, 1]  # the second build started from the first's timings


def test_a_timing_cache_of_another_tensorrt_is_replaced(fake_trt, onnx_files, tmp_path, capsys):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"FAKE-TRT-TIMING\n" + json.dumps({"version": "9.0.0", "entries": 7}).encode())
    _build(onnx_files[0], precision="fp32", timing_cache=cache)
    assert "made by another TensorRT or GPU" in capsys.readouterr().err
    assert json.loads(cache.read_bytes().split(b"\n", 1)[1])["version"] == fake_trt.__version__


def test_a_timing_cache_folder_is_refused_before_building(tmp_path):
    with pytest.raises(RtkError, match="is a folder; name a file in it"):
        BuildOptions(timing_cache=tmp_path)


def test_build_uses_the_gpu_asked_for(fake_trt, onnx_files):
    from engines.trt import TrtEngine

    engine = build_engine(onnx_files[0], options=BuildOptions(precision="fp32", max_batch=8, opt_batch=4), show_progress=False, device="cuda:1")
    builder = fake_trt._fake.devices[-1]
    assert builder.index == 1 and builder.activations == [1, 1]  # build and deserialise under cuda:1
    with TrtEngine(engine, "cuda:1") as trt:
        assert trt.device == "cuda:1"
        assert fake_trt._fake.devices[-1].activations and set(fake_trt._fake.devices[-1].activations) == {1}


# --- one logger, fresh errors -----------------------------------------------------------------


def test_one_logger_for_the_process_and_errors_of_this_operation_only(fake_trt, onnx_files):
    from engines.trt import TrtEngine
    from toolkit.core.trt import library as trt_library

    fake = fake_trt._fake
    fake.fail.add("build")
    with pytest.raises(RtkError, match="no kernel fits"):
        _build(onnx_files[0], precision="fp32")
    fake.fail.clear()
    engine = _build(onnx_files[0], precision="fp32")
    fake.fail.add("deserialize")
    with pytest.raises(RtkError) as caught:
        TrtEngine(engine)
    assert "magic tag does not match" in str(caught.value) and "no kernel fits" not in str(caught.value)
    assert fake.loggers_offered >= 3 and fake.logger is trt_library.logger(fake_trt).ilogger


# --- load and run -------------------------------------------------------------------------------


def test_no_execution_context_is_a_clear_error(fake_trt, onnx_files):
    from engines.trt import TrtEngine

    engine = _build(onnx_files[0], precision="fp32")
    fake_trt._fake.fail.add("context")
    with pytest.raises(RtkError, match=r"cannot create an execution context .*out of memory.*MiB of GPU memory for batch 8.*--max-batch"):
        TrtEngine(engine)


def test_a_misaligned_view_is_copied_and_not_confused_with_the_previous_batch(fake_trt, onnx_files):
    import torch

    from engines.trt import TrtEngine

    engine = _build(onnx_files[0], precision="fp32")
    host = _batch(9)
    with TrtEngine(engine) as trt:
        first = trt.run_device(torch.from_numpy(host[:8]).clone())
        aligned = trt._dev.empty((9, 3, 32, 32), torch.float32)
        aligned.copy_(torch.from_numpy(host))
        view = aligned[1:2, :, :1, :5]  # 80 bytes in: an address TensorRT refuses
        with pytest.raises(RtkError):  # not NCHW of the model's size: refused before TensorRT
            trt.run_device(view)
        shifted = aligned.view(-1)[5:5 + 8 * 3 * 32 * 32].view(8, 3, 32, 32)  # 20 bytes past an aligned block
        assert shifted.data_ptr() % 256
        second = trt.run_device(shifted)
    np.testing.assert_allclose(second.numpy(), _ort(onnx_files[0], shifted.numpy().copy()), rtol=1e-5, atol=1e-5)
    assert not np.allclose(first.numpy(), second.numpy())
    bound = [address for name, address in fake_trt._fake.called("set_tensor_address") if name == "input"]
    assert all(address % 256 == 0 for address in bound)


@pytest.mark.parametrize("failure,message", [
    ("address", r"refused the address of 'input'.*not 256-byte aligned"),
    ("shape", r"refused input shape \(2, 3, 32, 32\).*outside the profile"),
    ("execute", r"failed to run tiny.fp32.engine: an illegal memory access"),
])  # fmt: skip
def test_tensorrt_refusals_while_running_are_errors_not_stale_results(fake_trt, onnx_files, failure, message):
    from engines.trt import TrtEngine

    engine = _build(onnx_files[0], precision="fp32")
    with TrtEngine(engine) as trt:
        trt(_batch(2))
        fake_trt._fake.fail.add(failure)
        with pytest.raises(RtkError, match=message):
            trt(_batch(2, seed=5))


def test_an_engine_with_unsupported_tensor_types_is_refused_by_name(fake_trt, onnx_files):
    from engines.trt import TrtEngine

    engine = _build(onnx_files[0], precision="fp32")
    fake_trt._fake.io_dtype = "UINT8"
    with pytest.raises(RtkError, match="tensor 'input' is of TensorRT type UINT8; rtk runs engines whose"):
        TrtEngine(engine)


def test_a_plan_from_another_tensorrt_version_names_the_rebuild(fake_trt, onnx_files):
    from engines.trt import TrtEngine

    engine = _build(onnx_files[0], precision="fp32")
    sidecar = json.loads(Path(f"{engine}.json").read_text())
    sidecar["tensorrt_version"] = "10.0.1.6"
    Path(f"{engine}.json").write_text(json.dumps(sidecar))
    with pytest.raises(RtkError, match=r"built for TensorRT 10.0.1.6 .*rebuild it on this machine with `rtk build .*tiny.onnx --precision fp32"):
        TrtEngine(engine)


def test_device_memory_outside_torch_is_counted(fake_trt, onnx_files):
    from engines.trt import TrtEngine

    engine = _build(onnx_files[0], precision="fp32")
    with TrtEngine(engine) as trt:
        assert trt.device_memory_bytes > engine.stat().st_size


# --- loader, rebuilds, profiles ---------------------------------------------------------------------


def test_loader_keeps_the_precision_asked_for(fake_trt, onnx_files):

    fp16_engine = _build(onnx_files[0])
    with pytest.raises(RtkError, match="is an fp16 engine, not fp32; build one with `rtk build"):
        opened(fp16_engine, engine="trt", precision="fp32", device="cuda")
    with opened(fp16_engine, engine="trt", device="cuda") as trt:
        assert trt.precision == "fp16"


def test_open_engine_from_onnx_builds_the_precision_and_profile_asked_for(fake_trt, onnx_files):

    with opened(onnx_files[0], "trt", precision="fp32", device="cuda:1", max_batch=16) as trt:
        assert (trt.precision, trt.device, trt.max_batch) == ("fp32", "cuda:1", 16)
        assert trt.sidecar.profile == (1, 8, 16)


def test_ensure_engine_rebuilds_with_the_same_settings(fake_trt, onnx_files):
    fp32 = onnx_files[0]
    engine = _build(fp32, precision="fp32", workspace=1 << 28, tf32=False, builder_optimization_level=5)
    command = rebuild_command(read_sidecar(engine), engine)
    assert "--workspace 268435456 --no-tf32 --builder-optimization-level 5" in command
    assert ensure_engine(fp32, "fp32") == engine and len(fake_trt._fake.called("build_serialized_network")) == 1
    later = time.time() + 5
    os.utime(fp32, (later, later))  # the ONNX changed: the engine is stale
    fake_trt._fake.calls.clear()
    assert ensure_engine(fp32, "fp32") == engine
    assert ("set_memory_pool_limit", ("WORKSPACE", 1 << 28)) in fake_trt._fake.calls
    assert ("clear_flag", "TF32") in fake_trt._fake.calls
    assert read_sidecar(engine).build["builder_optimization_level"] == 5


def test_ensure_engine_widens_a_profile_too_small_for_the_batches_asked(fake_trt, onnx_files):
    engine = ensure_engine(onnx_files[0], "fp32", max_batch=8)
    assert read_sidecar(engine).profile == (1, 4, 8)
    assert ensure_engine(onnx_files[0], "fp32", max_batch=4) == engine
    assert len(fake_trt._fake.called("build_serialized_network")) == 1
    ensure_engine(onnx_files[0], "fp32", max_batch=32)
    assert read_sidecar(engine).profile == (1, 16, 32)


def test_trt_and_ort_trt_tune_for_the_same_batch(onnx_files):
    from engines.ort import _provider_options
    from toolkit.core.onnx_graph import ClassifierGraph
    from toolkit.core.trt.sidecar import profile_for

    graph = ClassifierGraph.read(onnx_files[0], None)
    options = _provider_options("trt", onnx_files[0], graph, 0, True, 32)
    assert profile_for(32) == (1, 16, 32)
    assert options["trt_profile_opt_shapes"] == "input:16x3x32x32"
    assert options["trt_profile_max_shapes"] == "input:32x3x32x32"


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_build_with_device_and_settings(fake_trt, onnx_files, cli, tmp_path):
    result = cli("build", onnx_files[0], "--precision", "fp32", "--max-batch", "8", "--opt-batch", "4",
                 "--device", "cuda:1", "--timing-cache", tmp_path / "t.cache", "--no-tf32")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"built .*tiny.fp32.engine .*fp32, batch 1/4/8", " ".join(result.output.split()))
    assert fake_trt._fake.devices[-1].index == 1 and (tmp_path / "t.cache").is_file()


def test_cli_build_timing_cache_folder_is_one_line(fake_trt, onnx_files, cli, tmp_path):
    result = cli("build", onnx_files[0], "--timing-cache", tmp_path)
    assert result.exit_code != 0
    assert "is a folder" in result.output and "Traceback" not in result.output


# --- a broken install -------------------------------------------------------------------------------


@pytest.fixture
def broken_tensorrt(tmp_path, monkeypatch):
    """A ``tensorrt`` package whose import fails the way a wheel without its CUDA libraries does."""
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise OSError("libnvinfer.so.10: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.delitem(__import__("sys").modules, "tensorrt", raising=False)


def test_a_broken_tensorrt_is_a_skip_reason_for_the_real_tests(broken_tensorrt):
    from helpers import tensorrt_skip_reason

    assert tensorrt_skip_reason() == "tensorrt is installed but cannot be imported (OSError: libnvinfer.so.10: cannot open shared object file)"


def test_a_broken_tensorrt_is_one_sentence_for_users(broken_tensorrt, onnx_files):
    with pytest.raises(RtkError, match=r"^tensorrt is installed but cannot be imported \(OSError: libnvinfer.so.10: .*reinstall it"):
        _build(onnx_files[0])


# --- ONNX Runtime's TensorRT provider ------------------------------------------------------------------


@pytest.mark.parametrize("requested,available,running", [
    ("trt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "trt"),
    ("trt", ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"),
    ("trt", ["CPUExecutionProvider"], "cpu"),
    ("cuda", ["TensorrtExecutionProvider", "CPUExecutionProvider"], "cpu"),
])  # fmt: skip
def test_a_missing_provider_falls_back_to_what_really_runs(requested, available, running):
    from engines.ort import fallback_provider

    assert fallback_provider(requested, available) == running


def test_tensorrt_11_alone_cannot_serve_onnx_runtimes_provider():
    from engines.ort_install import trt_provider_problem

    assert trt_provider_problem(10, "10.13.0.35") is None
    problem = trt_provider_problem(11, "11.4.0.106")
    assert "needs TensorRT 10 (libnvinfer.so.10)" in problem and "TensorRT 11.4.0.106" in problem


def test_the_provider_warning_names_cuda_and_the_tensorrt_fix(tmp_path, capsys):
    from engines import ort
    from engines.ort_install import trt_provider_problem

    ort._warn_fallback(tmp_path / "m.onnx", "trt", "TensorrtExecutionProvider failed to start", "cuda", trt_provider_problem(11, "11.4.0.106"))
    err = " ".join(capsys.readouterr().err.split())
    assert "running m.onnx on ONNX Runtime's CUDAExecutionProvider instead (named ort-cuda)" in err
    assert "needs TensorRT 10" in err and "onnxruntime-gpu" not in err
