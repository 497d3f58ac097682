"""TensorRT build and runtime logic that needs no TensorRT: options, fp16 route per TensorRT
version, sidecar write/read/compare, mismatch messages, and `rtk build` validation."""

from __future__ import annotations

import enum
import hashlib
import json
import re
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.trt import BuildOptions, choose_route, onnx_weight_precision, parse_workspace, resolve_fp16_onnx
from helpers import TINY_PRE, TINY_SPEC, opened
from toolkit.core.artefacts import engine_path_for
from toolkit.core.errors import RtkError, install_hint
from toolkit.core.trt.sidecar import (
    EngineSidecar,
    TensorInfo,
    TrtPlatform,
    check_engine_file,
    check_engine_tensors,
    check_platform,
    gpu_name_warning,
    platform_mismatch,
    read_sidecar,
    rebuild_command,
    sidecar_path,
    summarize_layers,
    write_sidecar,
)
from toolkit.usecases.inspect import describe_engine

# BuilderFlag members as the real bindings define them (from the 10.13.0.35 and 11.4.0.106 wheels):
# TensorRT 11 dropped FP16/BF16/INT8/FP8/INT4/FP4 and the precision-constraint flags.
TRT10_FLAGS = enum.Enum("BuilderFlag", "FP16 BF16 INT8 DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS "
                        "OBEY_PRECISION_CONSTRAINTS PREFER_PRECISION_CONSTRAINTS DIRECT_IO VERSION_COMPATIBLE FP8 "
                        "STRIP_PLAN WEIGHT_STREAMING INT4 STRICT_NANS MONITOR_MEMORY FP4")  # fmt: skip
TRT11_FLAGS = enum.Enum("BuilderFlag", "DEBUG GPU_FALLBACK DISABLE_TIMING_CACHE EDITABLE_TIMING_CACHE TF32 SPARSE_WEIGHTS "
                        "SAFETY_SCOPE DIRECT_IO VERSION_COMPATIBLE ERROR_ON_TIMING_CACHE_MISS STRIP_PLAN "
                        "WEIGHT_STREAMING STRICT_NANS MONITOR_MEMORY DISTRIBUTIVE_INDEPENDENCE")  # fmt: skip

HERE = TrtPlatform("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")
ENGINE_BYTES = b"not a real plan, but real bytes whose sha256 the sidecar records"


def make_sidecar(**changes) -> EngineSidecar:
    fields = dict(
        tensorrt_version=HERE.tensorrt_version,
        gpu_name=HERE.gpu_name,
        compute_capability=HERE.compute_capability,
        precision="fp16",
        profile=(1, 32, 128),
        inputs=(TensorInfo("input", "float32", (-1, 3, 32, 32)),),
        outputs=(TensorInfo("logits", "float32", (-1, 10)),),
        onnx="tiny.fp16.onnx",
        onnx_sha256="ab" * 32,
        engine_sha256=hashlib.sha256(ENGINE_BYTES).hexdigest(),
        spec=TINY_SPEC,
        preprocess=TINY_PRE,
        build={"route": "fp16-onnx", "tf32": True, "builder_optimization_level": 3},
        layers=({"name": "conv1", "type": "CaskConvolution"}, {"name": "fc", "type": "CaskGemm"}),
    )
    fields.update(changes)
    return EngineSidecar(**fields)


def write_engine(tmp_path, sidecar=None):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(ENGINE_BYTES)
    write_sidecar(sidecar or make_sidecar(), engine)
    return engine


def tiny_onnx(path, dtype=TensorProto.FLOAT):
    """A real one-layer ONNX classifier head (Gemm) whose weights are stored as ``dtype``."""
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    w = numpy_helper.from_array(np.ones((10, 4), np_dtype), "w")
    b = numpy_helper.from_array(np.zeros((10,), np_dtype), "b")
    x = helper.make_tensor_value_info("x", dtype, ["N", 4])
    y = helper.make_tensor_value_info("y", dtype, ["N", 10])
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g", [x], [y], [w, b])
    onnx.save(helper.make_model(graph), str(path))
    return path


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [("4GiB", 4 << 30), ("512MiB", 512 << 20), ("1.5G", 3 << 29), ("2GB", 2 * 10**9), ("1073741824", 1 << 30), (" 64 mib ", 64 << 20)],
)
def test_parse_workspace(text, expected):
    assert parse_workspace(text) == expected


@pytest.mark.parametrize("text", ["", "four GiB", "4XB", "-1GiB", "0", "0MiB"])
def test_parse_workspace_rejects_non_sizes(text):
    with pytest.raises(RtkError, match="workspace"):
        parse_workspace(text)


def test_build_options_defaults_are_the_documented_profile():
    options = BuildOptions()
    assert options.precision == "fp16" and options.profile == (1, 32, 128) and options.tf32
    assert options.builder_optimization_level == 3 and options.workspace is None


@pytest.mark.parametrize("profile", [(0, 1, 1), (2, 1, 4), (1, 64, 32), (4, 4, 3), (1.0, 2, 3)])
def test_build_options_reject_bad_batch_profiles(profile):
    lo, opt, hi = profile
    with pytest.raises(RtkError, match="batch"):
        BuildOptions(min_batch=lo, opt_batch=opt, max_batch=hi)


def test_build_options_accept_a_single_batch_profile():
    assert BuildOptions(min_batch=8, opt_batch=8, max_batch=8).profile == (8, 8, 8)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"builder_optimization_level": 6}, "at least 0 and at most 5, got 6"),
        ({"builder_optimization_level": -1}, "at least 0 and at most 5, got -1"),
        ({"precision": "bf16"}, "precision"),
        ({"workspace": 0}, "workspace"),
        ({"profiling_verbosity": "verbose"}, "profiling verbosity"),
    ],
)
def test_build_options_reject_bad_values(changes, message):
    with pytest.raises(RtkError, match=message):
        BuildOptions(**changes)


# --- fp16 route per TensorRT version -------------------------------------------------------------


def test_tensorrt_10_builds_fp16_from_the_fp32_onnx_with_the_builder_flag():
    route = choose_route("fp16", "fp32", TRT10_FLAGS)
    assert route.name == "builder-flag" and route.fp16_flag and not route.strongly_typed and not route.needs_fp16_onnx


def test_tensorrt_11_builds_fp16_from_the_fp16_onnx_strongly_typed():
    route = choose_route("fp16", "fp32", TRT11_FLAGS)
    assert route.name == "fp16-onnx" and route.strongly_typed and not route.fp16_flag and route.needs_fp16_onnx


@pytest.mark.parametrize("flags", [TRT10_FLAGS, TRT11_FLAGS])
def test_an_fp16_onnx_is_built_strongly_typed_on_both_versions(flags):
    route = choose_route("fp16", "fp16", flags)
    assert route.strongly_typed and not route.fp16_flag and not route.needs_fp16_onnx


@pytest.mark.parametrize("flags", [TRT10_FLAGS, TRT11_FLAGS])
def test_fp32_needs_the_fp32_onnx(flags):
    route = choose_route("fp32", "fp32", flags)
    assert route.name == "fp32" and not route.fp16_flag
    with pytest.raises(RtkError, match="fp32 engine needs the fp32 ONNX"):
        choose_route("fp32", "fp16", flags)


def test_int8_route_sets_the_int8_flag_on_tensorrt_10_and_is_strongly_typed_on_11():
    # TensorRT 10 builds explicit quantization (a QDQ graph) only with BuilderFlag.INT8, plus FP16 for
    # the layers left in float; TensorRT 11 has neither flag and takes the QDQ graph strongly typed.
    route = choose_route("int8", "int8", TRT10_FLAGS)
    assert (route.name, route.int8_flag, route.fp16_flag, route.strongly_typed) == ("qdq-int8-flag", True, True, False)
    route = choose_route("int8", "int8", TRT11_FLAGS)
    assert (route.name, route.int8_flag, route.fp16_flag, route.strongly_typed) == ("qdq-strongly-typed", False, False, True)
    with pytest.raises(RtkError, match="an int8 engine is built from a calibrated QDQ ONNX, not an fp32 one"):
        choose_route("int8", "fp32", TRT10_FLAGS)
    with pytest.raises(RtkError, match="quantized .QDQ., so it builds an int8 engine, not fp16; build it with --precision int8"):
        choose_route("fp16", "int8", TRT11_FLAGS)


def test_onnx_weight_precision_reads_the_initializers(tmp_path):
    assert onnx_weight_precision(tiny_onnx(tmp_path / "m.onnx")) == "fp32"
    assert onnx_weight_precision(tiny_onnx(tmp_path / "m.fp16.onnx", TensorProto.FLOAT16)) == "fp16"
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(RtkError, match="junk.onnx"):
        onnx_weight_precision(tmp_path / "junk.onnx")


def test_resolve_fp16_onnx_uses_the_sibling(tmp_path):
    fp32 = tiny_onnx(tmp_path / "model.onnx")
    fp16 = tiny_onnx(tmp_path / "model.fp16.onnx", TensorProto.FLOAT16)
    assert resolve_fp16_onnx(fp32, "11.4.0.106") == fp16


def test_resolve_fp16_onnx_without_sibling_or_checkpoint_says_how_to_make_it(tmp_path):
    fp32 = tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(RtkError) as err:
        resolve_fp16_onnx(fp32, "11.4.0.106")
    text = str(err.value)
    assert "TensorRT 11.4.0.106" in text and "model.fp16.onnx" in text
    assert "rtk export" in text and "--precision fp16" in text and "--precision fp32" in text


# --- sidecar ----------------------------------------------------------------------------------


def test_engine_path_fors(tmp_path):
    assert engine_path_for(tmp_path / "m.onnx") == tmp_path / "m.engine"
    assert engine_path_for(tmp_path / "m.fp16.onnx") == tmp_path / "m.engine"
    assert engine_path_for(tmp_path / "m.onnx", "fp32") == tmp_path / "m.fp32.engine"
    assert sidecar_path(tmp_path / "m.engine") == tmp_path / "m.engine.json"


def test_sidecar_round_trip(tmp_path):
    sidecar = make_sidecar()
    engine = write_engine(tmp_path, sidecar)
    assert read_sidecar(engine) == sidecar
    data = json.loads(sidecar_path(engine).read_text())
    assert data["format"] == "rtk.engine" and data["profile"] == {"min": 1, "opt": 32, "max": 128}
    assert data["spec"]["arch"] == "resnet18" and data["preprocess"]["input_size"] == [32, 32]
    assert data["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 3, 32, 32]}]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_missing_sidecar_is_a_clear_error(tmp_path):
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(ENGINE_BYTES)
    with pytest.raises(RtkError, match="has no sidecar tiny.engine.json"):
        read_sidecar(engine)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: {**d, "format": "something.else"}, "not an rtk engine sidecar"),
        (lambda d: {**d, "version": 99}, "sidecar version 99"),
        (lambda d: {k: v for k, v in d.items() if k != "tensorrt_version"}, "missing the field 'tensorrt_version'"),
        (lambda d: {**d, "profile": {"min": 8, "opt": 4, "max": 2}}, "batch profile"),
        (lambda d: {**d, "precision": "bf16"}, "precision"),
        (lambda d: {**d, "spec": {**d["spec"], "arch": "vgg16"}}, "unknown architecture"),
    ],
)
def test_damaged_sidecars_are_refused(tmp_path, mutate, message):
    engine = write_engine(tmp_path)
    path = sidecar_path(engine)
    data = mutate(json.loads(path.read_text()))
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(RtkError, match=message):
        read_sidecar(engine)


def test_same_tensorrt_and_gpu_can_run():
    assert platform_mismatch(make_sidecar(), HERE) is None
    check_platform(make_sidecar(), HERE, "tiny.engine")


def test_other_tensorrt_version_is_one_sentence_with_the_rebuild_command(tmp_path):
    engine = tmp_path / "tiny.engine"
    there = TrtPlatform("11.4.0.106", HERE.gpu_name, HERE.compute_capability)
    with pytest.raises(RtkError) as err:
        check_platform(make_sidecar(), there, engine)
    text = str(err.value)
    assert "built for TensorRT 10.13.0.35 on NVIDIA H100 80GB HBM3 (compute capability 9.0)" in text
    assert "this machine has TensorRT 11.4.0.106" in text
    assert f"rtk build {tmp_path / 'tiny.fp16.onnx'} --precision fp16" in text
    # One sentence: no full stop followed by another sentence, whatever dots the paths hold.
    assert not re.search(r"[.!?]\s+[A-Z]", text.replace(str(tmp_path), "DIR")) and "\n" not in text


def test_other_gpu_family_is_refused():
    there = TrtPlatform(HERE.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0")
    problem = platform_mismatch(make_sidecar(), there)
    assert "compute capability 9.0" in problem and "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in problem


def test_other_gpu_model_of_the_same_family_only_warns():
    there = TrtPlatform(HERE.tensorrt_version, "NVIDIA H200", "9.0")
    assert platform_mismatch(make_sidecar(), there) is None
    assert "tuned on NVIDIA H100 80GB HBM3" in gpu_name_warning(make_sidecar(), there)
    assert gpu_name_warning(make_sidecar(), HERE) is None


def test_rebuild_command_repeats_non_default_settings(tmp_path):
    sidecar = make_sidecar(profile=(2, 16, 64), precision="fp32", onnx="tiny.onnx")
    command = rebuild_command(sidecar, tmp_path / "deploy.plan")
    onnx_path, plan = tmp_path / "tiny.onnx", tmp_path / "deploy.plan"
    assert command == (
        f"rtk build {onnx_path} --precision fp32 --min-batch 2 --opt-batch 16 --max-batch 64 --output {plan}"
    )
    assert rebuild_command(make_sidecar(), tmp_path / "tiny.engine") == f"rtk build {tmp_path / 'tiny.fp16.onnx'} --precision fp16"


def test_engine_replaced_under_its_sidecar_is_refused(tmp_path):
    engine = write_engine(tmp_path)
    check_engine_file(read_sidecar(engine), engine, engine.read_bytes())
    engine.write_bytes(ENGINE_BYTES[:-1])  # truncated
    with pytest.raises(RtkError, match="does not match its sidecar"):
        check_engine_file(read_sidecar(engine), engine, engine.read_bytes())


def test_sidecar_that_disagrees_with_the_engine_is_refused(tmp_path):
    sidecar = make_sidecar()
    engine = tmp_path / "tiny.engine"
    check_engine_tensors(sidecar, engine, sidecar.inputs, sidecar.outputs, (1, 32, 128))
    with pytest.raises(RtkError, match=r"says profile \[1, 32, 128\] but tiny.engine has \[1, 32, 64\]"):
        check_engine_tensors(sidecar, engine, sidecar.inputs, sidecar.outputs, (1, 32, 64))
    renamed = (TensorInfo("images", "float32", (-1, 3, 32, 32)),)
    with pytest.raises(RtkError, match="says inputs"):
        check_engine_tensors(sidecar, engine, renamed, sidecar.outputs, (1, 32, 128))
    half_out = (TensorInfo("logits", "float16", (-1, 10)),)
    with pytest.raises(RtkError, match="says outputs"):
        check_engine_tensors(sidecar, engine, sidecar.inputs, half_out, (1, 32, 128))


def test_summarize_layers_detailed_and_names_only():
    detailed = {
        "Layers": [
            {
                "Name": "/conv1/Conv + /relu/Relu",
                "LayerType": "CaskConvolution",
                "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
                "Outputs": [{"Name": "/relu/Relu_output_0", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
                "TacticName": "sm90_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc",
                "TacticValue": "0x1234",
            },
            {"Name": "/fc/Gemm", "LayerType": "CaskGemmMatrixMultiply", "Outputs": []},
        ],
        "Bindings": ["input", "logits"],
    }
    layers = summarize_layers(json.dumps(detailed))
    assert layers[0]["type"] == "CaskConvolution" and layers[0]["tactic"].startswith("sm90_")
    assert layers[0]["output"].startswith("Channel major FP16") and layers[1] == {"name": "/fc/Gemm", "type": "CaskGemmMatrixMultiply"}
    assert summarize_layers({"Layers": ["conv1", "fc"], "Bindings": []}) == ({"name": "conv1"}, {"name": "fc"})
    # Inspectors that report the format and the data type as two fields.
    split = {"Layers": [{"Name": "c", "LayerType": "Conv", "Outputs": [{"Name": "o", "Format": "Channel major", "DataType": "Half"}]}]}
    assert summarize_layers(split)[0]["output"] == "Channel major / Half"


def test_describe_engine_reads_the_sidecar_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = write_engine(tmp_path)
    report = describe_engine(engine)
    assert report["kind"] == "engine" and report["arch"] == "resnet18-w16" and report["precision"] == "fp16"
    assert report["profile"] == {"min": 1, "opt": 32, "max": 128} and report["layer_count"] == 2
    assert report["layer_types"] == {"CaskConvolution": 1, "CaskGemm": 1}
    assert report["this_machine"].startswith("unknown")


# --- CLI ----------------------------------------------------------------------------------------


def test_help_lists_build(cli):
    result = cli("--help")
    assert result.exit_code == 0 and "build" in result.output
    result = cli("build", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--precision", "--min-batch", "--opt-batch", "--max-batch", "--workspace", "--timing-cache",
                   "--no-tf32", "--builder-optimization-level", "--profiling-verbosity"):  # fmt: skip
        assert option in result.output


def test_build_without_tensorrt_exits_1_with_the_install_hint(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed, on any machine
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    result = cli("build", onnx_path)
    assert result.exit_code == 1
    assert "tensorrt is needed" in result.stderr and install_hint("trt") in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not list(tmp_path.glob("*.engine*"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--min-batch", "8", "--opt-batch", "4"], "1 <= min-batch <= opt-batch <= max-batch"),
        (["--opt-batch", "256"], "1 <= min-batch <= opt-batch <= max-batch"),
        (["--min-batch", "0"], "--min-batch must be at least 1, got 0"),
        (["--workspace", "lots"], "workspace 'lots' is not a size"),
        (["--workspace", "9" * 400], "--workspace must be from 1 byte to 8 EiB"),
        (["--builder-optimization-level", "7"], "--builder-optimization-level must be at least 0 and at most 5, got 7"),
    ],
)
def test_build_rejects_bad_options(cli, tmp_path, args, message):
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    result = cli("build", onnx_path, *args)
    assert result.exit_code == 64, result.output  # a usage error, refused before TensorRT is even looked for
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.engine*"))


def test_build_missing_onnx_exits_1(cli, tmp_path, monkeypatch):
    result = cli("build", tmp_path / "absent.onnx")
    assert result.exit_code == 1 and "absent.onnx does not exist" in result.stderr


def test_build_refuses_an_output_that_is_not_an_engine(cli, tmp_path):
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    result = cli("build", onnx_path, "--output", tmp_path / "model.onnx2")
    assert result.exit_code == 1 and "whose files end in .engine or .plan or .trt, not .onnx2" in result.stderr


def test_inspect_engine_from_its_sidecar(cli, tmp_path):
    engine = write_engine(tmp_path)
    result = cli("inspect", engine, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tensorrt_version"] == "10.13.0.35" and report["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert report["onnx"] == "tiny.fp16.onnx" and report["layer_count"] == 2


def test_loading_an_engine_without_tensorrt_exits_with_the_hint(tmp_path, monkeypatch):

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = write_engine(tmp_path)
    with pytest.raises(RtkError) as raised:
        opened(engine)
    assert install_hint("trt") in str(raised.value)


@pytest.mark.parametrize("kind", ["onnx", "checkpoint"])
def test_trt_engine_from_onnx_or_checkpoint_without_tensorrt_exits_with_the_hint(tmp_path, monkeypatch, kind, tiny_checkpoint):

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    source = tiny_onnx(tmp_path / "model.onnx") if kind == "onnx" else tiny_checkpoint
    with pytest.raises(RtkError) as raised:
        opened(source, "trt")
    assert install_hint("trt") in str(raised.value)
    assert not list(tmp_path.glob("*.engine*")) and not tiny_checkpoint.with_suffix(".onnx").exists()


def test_export_trt_without_tensorrt_fails_before_exporting(cli, tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = cli("export", tiny_checkpoint, "--trt")
    assert result.exit_code == 1 and install_hint("trt") in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tiny_checkpoint.parent.glob("*.onnx")) and not list(tiny_checkpoint.parent.glob("*.engine*"))
