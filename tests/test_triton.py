"""`rtk triton`: Triton model repositories, checked with Triton's own ModelConfig schema."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_PRE, TINY_SPEC, opened
from toolkit.core.errors import install_hint
from toolkit.core.spec import ArtefactMeta, ModelSpec

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=f"tritonclient is not installed ({install_hint('dev')})")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse_config(model_dir: Path):
    """config.pbtxt parsed the way Triton parses it; fails on any field outside the schema."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def onnx_io(path: Path):
    """(name, elem type, dims) of the ONNX file's single input and output, read with onnx itself."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {t.name for t in graph.initializer}

    def io(v):
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    (inp,) = [io(v) for v in graph.input if v.name not in inits]
    (out,) = [io(v) for v in graph.output]
    return inp, out


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, exported_models):
    """A checkpoint and the fp32 ONNX that `rtk triton` finds up to date next to it.

    The exporter's own parity check is skipped here (the exporter's tests own it); the file is
    the one `ensure_onnx` would otherwise write.
    """
    from exporters.onnx import ensure_onnx

    files = exported_models(tmp_path_factory.mktemp("model"), name="tiny.pth")
    ckpt, exported = files["ckpt"], files["fp32"]
    assert ensure_onnx(ckpt, "fp32") == exported
    return ckpt, exported


def leftovers(repo: Path) -> list[Path]:
    """Staging folders or temp files left behind anywhere in the repository."""
    return [p for p in repo.rglob("*") if p.name.startswith(".")]


def test_checkpoint_to_onnx_repository_every_field(cli, onnx_model, tmp_path):
    ckpt, onnx_path = onnx_model
    repo = tmp_path / "repo"
    result = cli(
        "triton", ckpt, "--repo", repo, "--name", "tiny",
        "--max-batch-size", 16, "--preferred-batch-sizes", "4,8", "--preferred-batch-sizes", 16,
        "--max-queue-delay-us", 500, "--instances", 2, "--gpus", "0,1", "--ort-trt", "--ort-trt-workspace-mib", 512,
        "--ort-trt-cache", "/models/trt-cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model_dir = repo / "tiny"
    config = parse_config(model_dir)
    (in_name, in_type, in_dims), (out_name, out_type, out_dims) = onnx_io(onnx_path)

    assert config.name == "tiny"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    (inp,) = config.input
    assert (inp.name, inp.data_type, list(inp.dims)) == (in_name, mc.TYPE_FP32, in_dims[1:])
    assert list(inp.dims) == [3, 32, 32] and in_type == 1  # onnx FLOAT; batch axis excluded
    assert inp.format == mc.ModelInput.FORMAT_NCHW
    (out,) = config.output
    assert (out.name, out.data_type, list(out.dims)) == (out_name, mc.TYPE_FP32, [TINY_SPEC.num_classes])
    assert out_dims[1:] == [TINY_SPEC.num_classes]
    assert out.label_filename == "labels.txt"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = config.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt"
    assert accel.parameters["precision_mode"] == "FP16"
    assert accel.parameters["max_workspace_size_bytes"] == str(512 << 20)
    assert accel.parameters["trt_profile_min_shapes"] == f"{in_name}:1x3x32x32"
    assert accel.parameters["trt_profile_max_shapes"] == f"{in_name}:16x3x32x32"
    for cache in ("engine", "timing"):
        assert accel.parameters[f"trt_{cache}_cache_enable"] == "1"
        assert accel.parameters[f"trt_{cache}_cache_path"] == "/models/trt-cache"

    # The served file is the exported ONNX, byte for byte, and labels follow the class order.
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert (model_dir / "labels.txt").read_text().splitlines() == list(TINY_SPEC.class_names)
    meta = json.loads((model_dir / "rtk.json").read_text())
    assert ArtefactMeta.from_dict(meta) == ArtefactMeta(TINY_SPEC, TINY_PRE)
    assert meta["triton"]["input"] == {"name": in_name, "datatype": "FP32", "dims": [3, 32, 32]}
    assert meta["triton"]["output"]["name"] == out_name
    assert leftovers(repo) == []
    # Folders as readable as the user's umask allows (a server often runs as another user).
    umask = os.umask(0o022)
    os.umask(umask)
    for folder in (model_dir, model_dir / "1"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_served_model_answers_through_config_names_and_dims(cli, onnx_model, tmp_path):
    """A batch shaped [N, *dims] fed under the config's input name gives [N, *output dims] logits."""
    import onnxruntime as ort

    ckpt, _ = onnx_model
    repo = tmp_path / "repo"
    assert cli("triton", ckpt, "--repo", repo, "--cpu").exit_code == 0
    model_dir = repo / "tiny"
    config = parse_config(model_dir)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.random.rand(3, *config.input[0].dims).astype(np.float32)
    (logits,) = session.run([config.output[0].name], {config.input[0].name: batch})
    assert logits.shape == (3, *config.output[0].dims)

    with opened(ckpt) as eager:
        np.testing.assert_allclose(logits, eager(batch), atol=1e-3, rtol=1e-3)


def test_onnx_input_cpu_instances_and_defaults(cli, onnx_model, tmp_path):
    _, onnx_path = onnx_model
    repo = tmp_path / "repo"
    result = cli("triton", onnx_path, "--repo", repo, "--cpu", "--instances", 3)
    assert result.exit_code == 0, result.output
    model_dir = repo / "tiny"  # the file's stem
    config = parse_config(model_dir)
    assert config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_CPU, 3, [])
    assert not config.HasField("optimization")
    assert (model_dir / "1" / "model.onnx").is_file()


def test_fp16_onnx_keeps_fp32_io(cli, tmp_path, exported_models):
    fp16 = exported_models(tmp_path, precisions=("fp16",), name="net.pth")["fp16"]
    repo = tmp_path / "repo"
    assert cli("triton", fp16, "--repo", repo).exit_code == 0
    config = parse_config(repo / "net_fp16")
    assert config.input[0].data_type == mc.TYPE_FP32 and config.output[0].data_type == mc.TYPE_FP32
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == []


def test_new_version_keeps_old_and_existing_version_needs_force(cli, onnx_model, tmp_path):
    ckpt, _ = onnx_model
    repo = tmp_path / "repo"
    assert cli("triton", ckpt, "--repo", repo, "--cpu").exit_code == 0
    result = cli("triton", ckpt, "--repo", repo, "--cpu", "--max-batch-size", 8)
    assert result.exit_code == 0, result.output
    model_dir = repo / "tiny"
    assert (model_dir / "1" / "model.onnx").is_file() and (model_dir / "2" / "model.onnx").is_file()
    assert parse_config(model_dir).max_batch_size == 8  # the config follows the newest write

    result = cli("triton", ckpt, "--repo", repo, "--cpu", "--version", 1)
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.output

    marker = model_dir / "1" / "stale.txt"
    marker.write_text("old")
    result = cli("triton", ckpt, "--repo", repo, "--cpu", "--version", 1, "--force")
    assert result.exit_code == 0, result.output
    assert not marker.exists()  # the old version folder was replaced as a whole
    assert (model_dir / "1" / "model.onnx").is_file() and (model_dir / "2" / "model.onnx").is_file()
    assert leftovers(repo) == []


def test_onnx_with_external_weights_brings_them_along(cli, onnx_model, tmp_path):
    import onnx
    import onnxruntime as ort

    _, onnx_path = onnx_model
    split = tmp_path / "split" / "big.onnx"
    split.parent.mkdir()
    onnx.save_model(onnx.load(str(onnx_path)), str(split), save_as_external_data=True, location="big.onnx.data")
    repo = tmp_path / "repo"
    assert cli("triton", split, "--repo", repo, "--cpu").exit_code == 0
    version_dir = repo / "big" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["big.onnx.data", "model.onnx"]
    # Loadable from the repository alone: the weights travelled with the graph.
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 32, 32), np.float32)})[0].shape == (2, 10)


def test_onnx_with_fixed_batch_is_refused(cli, onnx_model, tmp_path):
    import onnx

    _, onnx_path = onnx_model
    proto = onnx.load(str(onnx_path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    result = cli("triton", fixed, "--repo", tmp_path / "repo")
    assert result.exit_code == 1
    assert "fixed batch of 4" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["a/b", "..", "a\\b", ".hidden"])
def test_name_with_path_separators_is_refused(cli, onnx_model, tmp_path, name):
    ckpt, _ = onnx_model
    repo = tmp_path / "repo"
    result = cli("triton", ckpt, "--repo", repo, "--name", name)
    assert result.exit_code == 64
    assert "model name" in result.stderr
    assert "Traceback" not in result.output
    assert not repo.exists()


def test_ort_trt_for_a_server_before_24_04_leaves_out_what_it_refuses(cli, onnx_model, tmp_path):
    ckpt, _ = onnx_model
    repo = tmp_path / "repo"
    result = cli("triton", ckpt, "--repo", repo, "--name", "tiny", "--ort-trt", "--ort-trt-cache", "/cache", "--triton-release", "24.03")
    assert result.exit_code == 0, result.output
    (accel,) = parse_config(repo / "tiny").optimization.execution_accelerators.gpu_execution_accelerator
    assert sorted(accel.parameters) == [
        "max_workspace_size_bytes", "precision_mode", "trt_engine_cache_enable", "trt_engine_cache_path",
    ]  # fmt: skip


def test_bad_option_values_are_refused(cli, onnx_model, tmp_path):
    ckpt, _ = onnx_model
    repo = tmp_path / "repo"
    cases = [
        (("--preferred-batch-sizes", "4,x"), "--preferred-batch-sizes takes comma-separated positive integers", 64),
        (("--max-batch-size", 8, "--preferred-batch-sizes", 16), "exceed the max batch size 8", 1),
        (("--cpu", "--gpus", 0), "exclude each other", 64),
        (("--cpu", "--ort-trt"), "--ort-trt needs GPU instances", 64),
        (("--instances", 0), "instances must be at least 1", 64),
        (("--ort-trt-cache", "/cache"), "applies with --ort-trt", 64),
        (("--ort-trt", "--ort-trt-cache", "cache"), "absolute path on the server", 64),
        (("--ort-trt", "--triton-release", "24"), "Triton release '24' is not YY.MM", 64),
        (("--ort-trt", "--ort-trt-cache", "/cache", "--triton-release", "21.08"), "--ort-trt-cache needs Triton 21.09", 64),
        (("--version", "99999999999999999999"), "--version must be at least 1 and at most 2147483647", 64),
    ]
    for args, message, status in cases:
        result = cli("triton", ckpt, "--repo", repo, *args)
        assert result.exit_code == status, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
    assert not (repo / "tiny").exists()


# --------------------------------------------------------------------------- TensorRT plans


def write_plan(folder: Path, profile=(1, 8, 16), name="tiny.engine", spec: ModelSpec = TINY_SPEC) -> Path:
    """A plan file with a real sidecar from rtk's sidecar writer (Triton never needs rtk to open the plan)."""
    from toolkit.core.artefacts import sha256_file
    from toolkit.core.trt.sidecar import EngineSidecar, TensorInfo, write_sidecar

    plan = folder / name
    plan.write_bytes(b"opaque serialized TensorRT engine bytes")
    sidecar = EngineSidecar(
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        precision="fp16",
        profile=profile,
        inputs=(TensorInfo("images", "float32", (-1, 3, 32, 32)),),
        outputs=(TensorInfo("logits", "float32", (-1, 10)),),
        onnx="tiny.fp16.onnx",
        onnx_sha256="0" * 64,
        engine_sha256=sha256_file(plan),
        spec=spec,
        preprocess=TINY_PRE,
    )
    write_sidecar(sidecar, plan)
    return plan


def test_plan_repository_every_field(cli, tmp_path):
    plan = write_plan(tmp_path, name="tiny.fp16.engine")
    repo = tmp_path / "repo"
    result = cli("triton", plan, "--repo", repo, "--preferred-batch-sizes", "8", "--gpus", 1)
    assert result.exit_code == 0, result.output
    model_dir = repo / "tiny_fp16"  # default name: the file's stem, dots made underscores
    config = parse_config(model_dir)
    assert config.name == "tiny_fp16"
    assert config.platform == "tensorrt_plan"
    assert config.max_batch_size == 16  # the profile's max
    assert (config.input[0].name, config.input[0].data_type, list(config.input[0].dims)) == ("images", mc.TYPE_FP32, [3, 32, 32])
    assert (config.output[0].name, list(config.output[0].dims), config.output[0].label_filename) == ("logits", [10], "labels.txt")
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert list(config.instance_group[0].gpus) == [1]
    assert not config.HasField("optimization")
    assert (model_dir / "1" / "model.plan").read_bytes() == plan.read_bytes()
    meta = json.loads((model_dir / "rtk.json").read_text())
    assert meta["triton"]["engine"]["tensorrt_version"] == "10.13.0.35"
    assert meta["triton"]["engine"]["profile"] == [1, 8, 16]
    assert (model_dir / "labels.txt").read_text().splitlines() == list(TINY_SPEC.class_names)


def test_new_version_with_other_classes_is_refused(cli, tmp_path):
    repo = tmp_path / "repo"
    assert cli("triton", write_plan(tmp_path), "--repo", repo, "--name", "clf").exit_code == 0
    other_spec = ModelSpec(arch="resnet18", num_classes=10, class_names=tuple(f"k{i}" for i in range(10)), stem="small", width=16)
    other = write_plan(tmp_path, name="other.engine", spec=other_spec)
    before = (repo / "clf" / "config.pbtxt").read_text()
    result = cli("triton", other, "--repo", repo, "--name", "clf")
    assert result.exit_code == 1
    assert "class_names" in result.stderr and "--name" in result.stderr
    assert "Traceback" not in result.output
    assert not (repo / "clf" / "2").exists()
    assert (repo / "clf" / "config.pbtxt").read_text() == before
    assert (repo / "clf" / "labels.txt").read_text().splitlines() == list(TINY_SPEC.class_names)

    # Plans of one model share a max batch size: a bigger one could exceed the older plan's profile.
    bigger = write_plan(tmp_path, profile=(1, 8, 64), name="bigger.engine")
    result = cli("triton", bigger, "--repo", repo, "--name", "clf")
    assert result.exit_code == 1 and "max_batch_size" in result.stderr
    assert cli("triton", bigger, "--repo", repo, "--name", "clf", "--max-batch-size", 16).exit_code == 0
    assert parse_config(repo / "clf").max_batch_size == 16 and (repo / "clf" / "2" / "model.plan").is_file()


def test_plan_profile_smaller_than_max_batch_size_is_refused(cli, tmp_path):
    plan = write_plan(tmp_path, profile=(1, 4, 8))
    repo = tmp_path / "repo"
    result = cli("triton", plan, "--repo", repo, "--max-batch-size", 32)
    assert result.exit_code == 1
    assert "accepts batches up to 8" in result.stderr and "32" in result.stderr
    assert "Traceback" not in result.output
    assert not repo.exists()


def test_plan_profile_not_starting_at_one_is_refused(cli, tmp_path):
    plan = write_plan(tmp_path, profile=(2, 8, 16))
    result = cli("triton", plan, "--repo", tmp_path / "repo")
    assert result.exit_code == 1
    assert "starts at batch 2" in result.stderr
    assert "Traceback" not in result.output


def test_plan_misuse_is_refused(cli, tmp_path):
    plan = write_plan(tmp_path)
    for args, message in [
        (("--precision", "fp32"), "is already built"),
        (("--cpu",), "runs only on GPUs"),
        (("--ort-trt",), "--ort-trt applies to ONNX models"),
        (("--platform", "onnx"), "is a TensorRT plan"),
    ]:
        result = cli("triton", plan, "--repo", tmp_path / "repo", *args)
        assert result.exit_code == 1, args
        assert message in result.stderr, (args, result.stderr)
    plan.write_bytes(b"another engine")
    result = cli("triton", plan, "--repo", tmp_path / "repo")
    assert result.exit_code == 1 and "does not match its sidecar" in result.stderr
    plan = write_plan(tmp_path)
    not_a_folder = tmp_path / "repo.txt"
    not_a_folder.write_text("x")
    result = cli("triton", plan, "--repo", not_a_folder)
    assert result.exit_code == 1 and "is not a folder" in result.stderr
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"x")
    result = cli("triton", bare, "--repo", tmp_path / "repo")
    assert result.exit_code == 1 and "no sidecar" in result.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_platform_without_tensorrt_fails_before_exporting(cli, onnx_model, tmp_path):
    ckpt, _ = onnx_model
    result = cli("triton", ckpt, "--repo", tmp_path / "repo", "--platform", "tensorrt")
    assert result.exit_code == 1
    assert "tensorrt is needed" in result.stderr and install_hint("trt") in result.stderr
    assert "Traceback" not in result.output
    assert not ckpt.with_name("tiny.fp16.onnx").exists() and not (tmp_path / "repo").exists()


def test_rtk_json_builds_the_request_a_triton_client_sends(cli, tmp_path):
    """The README's client recipe, up to the network call: rtk.json alone gives a valid request."""
    import tritonclient.grpc as grpcclient
    from PIL import Image

    from toolkit.core.images import load_image
    from toolkit.core.transforms import image_to_array

    repo = tmp_path / "repo"
    assert cli("triton", write_plan(tmp_path), "--repo", repo).exit_code == 0
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.randint(0, 256, (50, 70, 3), np.uint8)).save(image)

    meta = json.loads((repo / "tiny" / "rtk.json").read_text())
    io = meta["triton"]
    batch = image_to_array(load_image(image), ArtefactMeta.from_dict(meta).preprocess)[None]
    assert list(batch.shape[1:]) == io["input"]["dims"] == list(parse_config(repo / "tiny").input[0].dims)
    request = grpcclient.InferInput(io["input"]["name"], list(batch.shape), io["input"]["datatype"])
    request.set_data_from_numpy(batch)  # raises on a dtype or shape that disagrees with the declaration
    grpcclient.InferRequestedOutput(io["output"]["name"], class_count=5)
    assert io["model"] == "tiny" and io["output"]["name"] == parse_config(repo / "tiny").output[0].name


def test_force_never_replaces_the_folder_its_own_model_lives_in(cli, onnx_model, tmp_path):
    _, onnx_path = onnx_model
    repo = tmp_path / "repo"
    assert cli("triton", onnx_path, "--repo", repo, "--name", "tiny").exit_code == 0
    served = repo / "tiny" / "1" / "model.onnx"
    before = served.read_bytes()
    result = cli("triton", served, "--repo", repo, "--name", "tiny", "--version", "1", "--force")
    assert result.exit_code == 1 and "lies in" in result.stderr and "Traceback" not in result.output
    assert served.read_bytes() == before and not leftovers(repo)
