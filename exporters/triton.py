"""Triton Inference Server model repositories from rtk artefacts.

:func:`export_triton` turns a checkpoint, an ONNX file or a TensorRT plan (with its JSON
sidecar) into one model of a Triton model repository::

    REPO/NAME/config.pbtxt     Triton's ModelConfig, protobuf text format
    REPO/NAME/labels.txt       one class name per line (the classification extension reads it)
    REPO/NAME/rtk.json         the spec and preprocess a client must apply, plus the I/O names
    REPO/NAME/VERSION/model.onnx  (or model.plan)

The config is built as a ``ModelConfig`` message from Triton's own schema (shipped by
``tritonclient``) and written with ``google.protobuf.text_format``, so it is exactly what the
server parses. Every file is staged in a temporary folder inside the repository and renamed
into place; old versions are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from exporters.onnx import ensure_onnx
from exporters.trt import ensure_engine
from toolkit.core.artefacts import artefact_kind, sha256_file
from toolkit.core.checkpoint import CheckpointOptions
from toolkit.core.errors import RtkError, require
from toolkit.core.onnx_graph import check_classifier_io, external_data_files, graph_io, load_onnx_graph, read_onnx_meta
from toolkit.core.outputs import Output, check_outputs, fsync_tree, is_inside, staged_folder
from toolkit.core.precision import TRITON_PRECISIONS, check_precision
from toolkit.core.spec import ArtefactMeta
from toolkit.core.trt.sidecar import (
    TensorInfo,  # name, numpy dtype, shape with -1 for dynamic axes
    read_sidecar,
)
from toolkit.core.validation import COUNT, COUNT_OR_ZERO, WORKSPACE, UsageError, check_name

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

#: rtk platform name -> Triton's ``platform`` string.
PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
#: rtk platform name -> the file name Triton looks for in a version folder.
MODEL_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
META_FILE = "rtk.json"
#: max_batch_size for ONNX models when none is asked for (ONNX graphs have no upper bound).
DEFAULT_MAX_BATCH_SIZE = 32
#: Workspace TensorRT may use inside ONNX Runtime (Triton's own default is 1 GiB too).
DEFAULT_ORT_TRT_WORKSPACE = 1 << 30

# Artefact dtypes (numpy names) -> Triton DataType enum names.
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float64": "TYPE_FP64",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}


@dataclass(frozen=True)
class ServedArtefact:
    """A model file ready to be placed in a Triton repository.

    Attributes:
        path: the ONNX file or TensorRT plan.
        platform: ``"onnx"`` or ``"tensorrt"``.
        meta: the spec and preprocess it carries.
        input: its single NCHW input.
        output: its single (batch, classes) output.
        profile: a plan's optimisation profile (min, opt, max batch); ``None`` for ONNX.
        extra_files: files the model needs beside it (ONNX external data), relative to its folder.
        details: facts a server operator needs (TensorRT version and GPU of a plan).
    """

    path: Path
    platform: str
    meta: ArtefactMeta
    input: TensorInfo
    output: TensorInfo
    profile: tuple[int, int, int] | None = None
    extra_files: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


#: The first Triton release whose onnxruntime backend accepts ``trt_profile_*_shapes`` and the
#: timing cache parameters (triton-inference-server/server#7156: 24.03 refuses them).
ORT_TRT_PROFILE_RELEASE = "24.04"
#: The first Triton release with the onnxruntime backend's TensorRT engine cache.
ORT_TRT_CACHE_RELEASE = "21.09"


def parse_release(text: str) -> tuple[int, int]:
    """A Triton release ``"24.04"`` as ``(24, 4)``.

    Raises:
        RtkError: not ``YY.MM``.
    """
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts) or not 1 <= int(parts[1]) <= 12:
        raise UsageError(f"--triton-release: Triton release {text!r} is not YY.MM, e.g. 24.04")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class TritonOptions:
    """How the model is laid out and served.

    Attributes:
        name: model name (folder under the repository); defaults to the artefact's file stem.
        version: version folder; defaults to one past the newest existing version (1 in a new model).
        platform: ``"onnx"`` or ``"tensorrt"``; defaults to what the artefact is (checkpoints → ONNX).
        precision: ``"fp32"`` or ``"fp16"``: the ONNX exported from a checkpoint, or the plan
            built when ``platform`` is tensorrt (default fp32 for ONNX, fp16 for TensorRT).
        max_batch_size: largest batch Triton forms; defaults to a plan's profile max, else
            :data:`DEFAULT_MAX_BATCH_SIZE`.
        preferred_batch_sizes: batch sizes the dynamic batcher aims for (empty = any up to the max).
        max_queue_delay_us: how long a request may wait for others to join its batch.
        instances: model instances per GPU (or on the CPU).
        gpus: GPU indices to place instances on; empty = every GPU.
        cpu: run the instances on the CPU (ONNX only).
        ort_trt: let ONNX Runtime hand the graph to TensorRT (FP16) inside Triton.
        ort_trt_workspace_bytes: TensorRT workspace limit for ``ort_trt``.
        ort_trt_cache: a folder *as the server sees it* where ONNX Runtime keeps the TensorRT
            engines and timing cache it builds; without it every server start rebuilds them.
        triton_release: the oldest Triton release (``YY.MM``) the config must load on. Triton's
            onnxruntime backend accepts the ``trt_profile_*`` and ``trt_timing_cache_*``
            parameters from 24.04 on (older servers refuse the whole model), the engine cache
            from 21.09: for an older release those parameters are left out.
        force: replace an existing version folder.
        checkpoint_options: which of a checkpoint's weights to export (EMA or raw), and whether
            to trust a pickle.
    """

    name: str | None = None
    version: int | None = None
    platform: str | None = None
    precision: str | None = None
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    instances: int = 1
    gpus: tuple[int, ...] = ()
    cpu: bool = False
    ort_trt: bool = False
    ort_trt_workspace_bytes: int = DEFAULT_ORT_TRT_WORKSPACE
    ort_trt_cache: str | None = None
    triton_release: str = ORT_TRT_PROFILE_RELEASE
    force: bool = False
    checkpoint_options: CheckpointOptions = field(default_factory=CheckpointOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))
        object.__setattr__(self, "gpus", tuple(sorted(set(self.gpus))))
        check_name(self.name, "--name (the model name)")
        for flag, value, rule in (
            ("--version", self.version, COUNT), ("--max-batch-size", self.max_batch_size, COUNT),
            ("--max-queue-delay-us", self.max_queue_delay_us, COUNT_OR_ZERO), ("--instances", self.instances, COUNT),
            ("the TensorRT workspace (bytes)", self.ort_trt_workspace_bytes, WORKSPACE),
        ):
            rule.check(value, flag)
        for size in self.preferred_batch_sizes:
            COUNT.check(size, "--preferred-batch-sizes")
        for gpu in self.gpus:
            COUNT_OR_ZERO.check(gpu, "--gpus")
        if self.platform is not None and self.platform not in PLATFORMS:
            raise UsageError(f"unknown platform {self.platform!r}; choose one of {', '.join(PLATFORMS)}")
        if self.precision is not None:
            check_precision(self.precision, TRITON_PRECISIONS)
        if self.cpu and self.gpus:
            raise UsageError("--cpu and --gpus exclude each other: instances run either on the CPU or on GPUs")
        if self.cpu and self.ort_trt:
            raise UsageError("--ort-trt needs GPU instances; drop --cpu")
        if self.ort_trt_cache is not None and not self.ort_trt:
            raise UsageError("--ort-trt-cache applies with --ort-trt")
        if self.ort_trt_cache is not None and not self.ort_trt_cache.startswith("/"):
            raise UsageError(f"--ort-trt-cache must be an absolute path on the server, got {self.ort_trt_cache!r}")
        release = parse_release(self.triton_release)
        if self.ort_trt_cache is not None and release < parse_release(ORT_TRT_CACHE_RELEASE):
            raise UsageError(
                f"--ort-trt-cache needs Triton {ORT_TRT_CACHE_RELEASE} or newer (its onnxruntime backend's engine cache); "
                f"--triton-release is {self.triton_release}"
            )

    @property
    def ort_trt_profiles(self) -> bool:
        """Whether the server takes ``trt_profile_*`` and ``trt_timing_cache_*`` parameters."""
        return parse_release(self.triton_release) >= parse_release(ORT_TRT_PROFILE_RELEASE)


@dataclass(frozen=True)
class TritonModel:
    """What :func:`export_triton` wrote.

    Attributes:
        name: the model name.
        version: the version folder written.
        model_dir: ``REPO/NAME``.
        platform: ``"onnx"`` or ``"tensorrt"``.
        max_batch_size: the config's ``max_batch_size``.
        files: every file written, in the order they were put in place.
        replaced: an existing version folder was replaced (``force``).
        versions: every version now in the model folder.
        source: the artefact placed in the version folder.
        details: what a plan needs from the server (TensorRT version, compute capability); empty for ONNX.
    """

    name: str
    version: int
    model_dir: Path
    platform: str
    max_batch_size: int
    files: tuple[Path, ...]
    replaced: bool
    versions: tuple[int, ...]
    source: Path
    details: Mapping[str, Any] = field(default_factory=dict)


def check_model_name(name: str) -> str:
    """A model name made from a file name: a single, visible folder name (:func:`toolkit.core.validation.check_name`).

    Raises:
        RtkError: the name is empty, holds a path separator, or is ``.``/``..``/hidden.
    """
    try:
        return check_name(name, "model name")
    except UsageError as exc:  # the file's name, not an option, is at fault: an error about the input
        raise RtkError(str(exc)) from None


# --------------------------------------------------------------------------- artefacts


def resolve_artefact(
    model: str | os.PathLike,
    platform: str | None = None,
    precision: str | None = None,
    checkpoint_options: CheckpointOptions | None = None,
) -> ServedArtefact:
    """The file Triton will serve for ``model``, exporting or building it when needed.

    Args:
        model: a checkpoint, an ONNX file or a TensorRT plan/engine with its sidecar.
        platform: ``"onnx"`` or ``"tensorrt"``; ``None`` = what ``model`` already is.
        precision: ``"fp32"`` or ``"fp16"``: the ONNX exported from a checkpoint, or the plan
            built for ``platform="tensorrt"`` (default fp32 for ONNX, fp16 for plans).
        checkpoint_options: which of a checkpoint's weights to export, and whether to trust a pickle.

    Returns:
        The artefact with its metadata and I/O.
    """
    path = Path(model)
    kind = artefact_kind(path)
    platform = platform or ("tensorrt" if kind == "engine" else "onnx")
    if kind == "engine":
        if platform != "tensorrt":
            raise RtkError(f"{path.name} is a TensorRT plan; serve it with --platform tensorrt or pass its ONNX/checkpoint")
        if precision is not None:
            raise RtkError(f"{path.name} is already built; --precision applies when rtk exports or builds the model")
        return plan_artefact(path)
    if kind == "onnx" and platform == "onnx" and precision is not None:
        raise RtkError(f"--precision chooses what rtk exports from a checkpoint; {path.name} is already an ONNX file")
    if platform == "tensorrt":
        # Fail before a minute-long ONNX export, not after it.
        require("tensorrt", "building a TensorRT plan for Triton")
    precision = precision or ("fp16" if platform == "tensorrt" else "fp32")
    if kind == "checkpoint":
        path = ensure_onnx(path, precision, checkpoint_options)
    if platform == "tensorrt":
        return plan_artefact(ensure_engine(path, precision))
    return onnx_artefact(path)


def onnx_artefact(path: str | os.PathLike) -> ServedArtefact:
    """An ONNX file's I/O, metadata and external-data files.

    Raises:
        RtkError: the file is not readable ONNX, carries no rtk metadata, or is not a single
            NCHW-input, single-output classifier.
    """

    path = Path(path)
    meta = read_onnx_meta(path)
    proto = load_onnx_graph(path)
    inputs, outputs = graph_io(proto)
    check_classifier_io(inputs, outputs, meta.spec, meta.preprocess, str(path))
    # Triton writes a dynamic axis as -1, whether ONNX names it ("batch") or leaves it unknown.
    as_triton = [TensorInfo(t.name, t.dtype, tuple(d if isinstance(d, int) else -1 for d in t.shape)) for t in inputs + outputs]
    inp, out = _single_io(path, as_triton[: len(inputs)], as_triton[len(inputs) :])
    return ServedArtefact(
        path=path,
        platform="onnx",
        meta=meta,
        input=inp,
        output=out,
        extra_files=external_data_files(proto, path),
    )


def plan_artefact(path: str | os.PathLike) -> ServedArtefact:
    """A TensorRT plan described by its JSON sidecar (the plan itself is never deserialised).

    Raises:
        RtkError: the sidecar is missing or invalid, the plan is not the file it describes, or
            the plan has more than one input/output.
    """

    path = Path(path)
    sidecar = read_sidecar(path)
    # labels.txt and rtk.json come from the sidecar: a plan swapped under it would be served
    # with another model's classes and preprocessing.
    if sha256_file(path) != sidecar.engine_sha256:
        raise RtkError(f"{path} does not match its sidecar (sha256 differs); rebuild it with `rtk build`")
    inp, out = _single_io(path, list(sidecar.inputs), list(sidecar.outputs))
    return ServedArtefact(
        path=path,
        platform="tensorrt",
        meta=ArtefactMeta(sidecar.spec, sidecar.preprocess),
        input=inp,
        output=out,
        profile=tuple(sidecar.profile),  # type: ignore[arg-type]
        details={
            "tensorrt_version": sidecar.tensorrt_version,
            "gpu_name": sidecar.gpu_name,
            "compute_capability": sidecar.compute_capability,
            "precision": sidecar.precision,
            "profile": list(sidecar.profile),
            "engine_sha256": sidecar.engine_sha256,
        },
    )


def _single_io(path: Path, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> tuple[TensorInfo, TensorInfo]:
    if len(inputs) != 1 or len(outputs) != 1:
        raise RtkError(
            f"{path.name} has {len(inputs)} input(s) and {len(outputs)} output(s); an image classifier for Triton "
            "needs exactly one NCHW input and one logits output"
        )
    inp, out = inputs[0], outputs[0]
    if len(inp.shape) != 4:
        raise RtkError(f"{path.name}: input {inp.name!r} has shape {list(inp.shape)}; expected NCHW (4 axes)")
    if len(out.shape) != 2:
        raise RtkError(f"{path.name}: output {out.name!r} has shape {list(out.shape)}; expected (batch, classes)")
    for tensor in (inp, out):
        if tensor.dtype not in TRITON_DTYPES:
            raise RtkError(f"{path.name}: {tensor.name!r} has dtype {tensor.dtype}, which Triton does not support")
    return inp, out


# --------------------------------------------------------------------------- config


def resolve_max_batch_size(artefact: ServedArtefact, requested: int | None) -> int:
    """The config's ``max_batch_size``: what was asked for, bounded by what the artefact accepts.

    Raises:
        RtkError: the artefact has a fixed batch, its profile does not start at 1, or it cannot
            take ``requested``.
    """
    batch = artefact.input.shape[0]
    if artefact.profile is None:
        if batch != -1:
            raise RtkError(
                f"{artefact.path.name} has a fixed batch of {batch}; Triton's dynamic batcher needs a dynamic batch "
                "axis, re-export it without a static batch"
            )
        return requested or DEFAULT_MAX_BATCH_SIZE
    low, _, high = artefact.profile
    if low > 1:
        raise RtkError(
            f"{artefact.path.name}'s optimisation profile starts at batch {low}, but Triton sends batches from 1; "
            "rebuild the engine with a minimum batch of 1"
        )
    if requested is not None and requested > high:
        raise RtkError(
            f"{artefact.path.name}'s optimisation profile accepts batches up to {high}, smaller than the requested "
            f"max batch size {requested}; lower --max-batch-size or rebuild the engine with a larger max batch"
        )
    return requested or high


def build_config(artefact: ServedArtefact, name: str, options: TritonOptions) -> "model_config_pb2.ModelConfig":
    """Triton's ``ModelConfig`` message for ``artefact``.

    Args:
        artefact: the model to serve.
        name: the model name (must equal its folder name).
        options: batching, instances and acceleration settings.

    Returns:
        The message; write it with :func:`config_text`.

    Raises:
        RtkError: options the artefact cannot honour (batch sizes beyond its profile, CPU
            instances for a plan, ORT acceleration for a plan).
    """
    mc = _model_config_pb2()
    max_batch = resolve_max_batch_size(artefact, options.max_batch_size)
    too_big = [size for size in options.preferred_batch_sizes if size > max_batch]
    if too_big:
        raise RtkError(f"preferred batch size(s) {', '.join(map(str, too_big))} exceed the max batch size {max_batch}")
    if artefact.platform == "tensorrt" and options.cpu:
        raise RtkError("a TensorRT plan runs only on GPUs; drop --cpu or serve the ONNX model")
    if artefact.platform == "tensorrt" and options.ort_trt:
        raise RtkError("--ort-trt applies to ONNX models; a TensorRT plan already is a TensorRT engine")

    config = mc.ModelConfig(name=name, platform=PLATFORMS[artefact.platform], max_batch_size=max_batch)
    inp = config.input.add(
        name=artefact.input.name,
        data_type=mc.DataType.Value(TRITON_DTYPES[artefact.input.dtype]),
        dims=list(artefact.input.shape[1:]),
    )
    # Lets generic clients (Triton's image_client among them) know the layout.
    inp.format = mc.ModelInput.FORMAT_NCHW
    config.output.add(
        name=artefact.output.name,
        data_type=mc.DataType.Value(TRITON_DTYPES[artefact.output.dtype]),
        dims=[artefact.meta.spec.num_classes],
        label_filename=LABELS_FILE,
    )
    config.dynamic_batching.preferred_batch_size.extend(options.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    group = config.instance_group.add(count=options.instances)
    if options.cpu:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    else:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(options.gpus)
    if options.ort_trt:
        _add_tensorrt_accelerator(config, artefact, options, max_batch)
    return config


def _add_tensorrt_accelerator(config, artefact: ServedArtefact, options: TritonOptions, max_batch: int) -> None:
    """ONNX Runtime's TensorRT accelerator in fp16, with one profile over every batch and persistent caches."""
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    accelerator.parameters["precision_mode"] = "FP16"
    accelerator.parameters["max_workspace_size_bytes"] = str(options.ort_trt_workspace_bytes)
    # One TensorRT profile covering every batch the dynamic batcher can form; without it
    # ONNX Runtime rebuilds the engine whenever a batch larger than any seen so far arrives.
    chw = "x".join(str(d) for d in _static_chw(artefact))
    if options.ort_trt_profiles:
        for key, batch in (("min", 1), ("opt", max_batch), ("max", max_batch)):
            accelerator.parameters[f"trt_profile_{key}_shapes"] = f"{artefact.input.name}:{batch}x{chw}"
    if options.ort_trt_cache:
        # Engines and tactic timings survive server restarts (a ResNet-101 build takes minutes).
        for cache in ("engine", "timing") if options.ort_trt_profiles else ("engine",):
            accelerator.parameters[f"trt_{cache}_cache_enable"] = "1"
            accelerator.parameters[f"trt_{cache}_cache_path"] = options.ort_trt_cache


def _static_chw(artefact: ServedArtefact) -> tuple[int, ...]:
    dims = artefact.input.shape[1:]
    if any(d < 1 for d in dims):
        pre = artefact.meta.preprocess
        return (pre.num_channels, *pre.input_size)
    return dims


def config_text(config: "model_config_pb2.ModelConfig") -> str:
    """The protobuf text format of ``config``, as Triton reads ``config.pbtxt``."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def read_config(path: str | os.PathLike) -> "model_config_pb2.ModelConfig":
    """Parse a ``config.pbtxt`` with Triton's schema.

    Raises:
        RtkError: the file does not parse as a ``ModelConfig``.
    """
    from google.protobuf import text_format

    mc = _model_config_pb2()
    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise RtkError(f"cannot read Triton config {path}: {exc}") from None


def _model_config_pb2():
    return require("tritonclient.grpc.model_config_pb2", "writing Triton model configs")


# --------------------------------------------------------------------------- repository


def export_triton(model: str | os.PathLike, repo: str | os.PathLike, options: TritonOptions = TritonOptions()) -> TritonModel:
    """Write ``model`` into the Triton model repository ``repo``.

    Args:
        model: a checkpoint (exported to ONNX next to it when needed), an ONNX file, or a
            TensorRT plan/engine with its sidecar.
        repo: the model repository folder (created when missing).
        options: name, version, platform, batching and instance settings.

    Returns:
        What was written.

    Raises:
        RtkError: bad options, an artefact the options cannot serve, an existing version
            without ``force``, or versions whose interface would break under the new config.
    """
    artefact = resolve_artefact(model, options.platform, options.precision, options.checkpoint_options)
    name = options.name or check_model_name(_default_name(Path(model)))
    config = build_config(artefact, name, options)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise RtkError(f"repository {repo} exists and is not a folder")
    model_dir = repo / name
    if model_dir.exists() and not model_dir.is_dir():
        raise RtkError(f"{model_dir} exists and is not a folder")
    check_outputs([Output(model_dir / file, "--repo") for file in (CONFIG_FILE, LABELS_FILE, META_FILE)], [model, artefact.path])
    existing = _versions(model_dir)
    version = options.version or (max(existing) + 1 if existing else 1)
    replaced = version in existing
    if replaced and not options.force:
        raise RtkError(f"{model_dir / str(version)} already exists; pass --force to replace it or choose another --version")
    for source in dict.fromkeys([Path(model), artefact.path]):
        if replaced and is_inside(source, model_dir / str(version)):
            raise RtkError(f"refusing --force: {source} lies in {model_dir / str(version)}, the version folder it would replace")
    others = [v for v in existing if v != version]
    meta = _meta_json(artefact, name, config)
    if others:
        _check_compatible(model_dir, config, meta, others)

    files = _write_model(repo, model_dir, version, artefact, config, meta)
    return TritonModel(
        name=name,
        version=version,
        model_dir=model_dir,
        platform=artefact.platform,
        max_batch_size=config.max_batch_size,
        files=files,
        replaced=replaced,
        versions=tuple(_versions(model_dir)),
        source=artefact.path,
        details=dict(artefact.details),
    )


def _default_name(path: Path) -> str:
    # "resnet50.fp16.onnx" -> "resnet50_fp16": dots read as extensions to many tools.
    return re.sub(r"[^\w-]", "_", path.name[: -len(path.suffix)] if path.suffix else path.name)


def _versions(model_dir: Path) -> list[int]:
    # Triton serves only folders named by a number without leading zeros.
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"[1-9][0-9]*", p.name))


def _meta_json(artefact: ServedArtefact, name: str, config) -> dict[str, Any]:
    meta = artefact.meta.to_dict()
    meta["triton"] = {
        "model": name,
        "platform": config.platform,
        "max_batch_size": config.max_batch_size,
        "input": {"name": artefact.input.name, "datatype": _wire_type(artefact.input.dtype), "dims": list(config.input[0].dims)},
        "output": {"name": artefact.output.name, "datatype": _wire_type(artefact.output.dtype), "labels": LABELS_FILE},
    }
    if artefact.details:
        meta["triton"]["engine"] = dict(artefact.details)
    return meta


def _wire_type(dtype: str) -> str:
    # The datatype string a client passes to InferInput ("FP32"), from Triton's TYPE_FP32.
    return TRITON_DTYPES[dtype].removeprefix("TYPE_")


def _interface(config, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What every version of one model shares: clients, labels and preprocessing depend on it."""
    return {
        "platform": config.platform,
        # An older plan's profile may not reach a larger max batch size: keep it for plans.
        "max_batch_size": config.max_batch_size if config.platform == PLATFORMS["tensorrt"] else None,
        "input": [(t.name, t.data_type, list(t.dims)) for t in config.input],
        "output": [(t.name, t.data_type, list(t.dims)) for t in config.output],
        "class_names": (meta.get("spec") or {}).get("class_names"),
        "preprocess": meta.get("preprocess"),
    }


def _check_compatible(model_dir: Path, config, meta: Mapping[str, Any], others: list[int]) -> None:
    config_path, meta_path = model_dir / CONFIG_FILE, model_dir / META_FILE
    if not config_path.exists():
        return  # versions placed by hand without a config: nothing to keep consistent
    try:
        old_meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise RtkError(f"cannot read {meta_path}: {exc}") from None
    old, new = _interface(read_config(config_path), old_meta), _interface(config, meta)
    if not old_meta:
        old["class_names"], old["preprocess"] = new["class_names"], new["preprocess"]
    differ = [key for key in new if old[key] != new[key]]
    if differ:
        listed = ", ".join(map(str, others))
        raise RtkError(
            f"{model_dir.name} already serves version(s) {listed} with a different {', '.join(differ)}; all versions of a "
            "Triton model share one config, so write this one under another --name"
        )


def _write_model(repo: Path, model_dir: Path, version: int, artefact: ServedArtefact, config, meta) -> tuple[Path, ...]:
    """Stage every file in a temporary folder inside the repository, then rename into place.

    A new model is staged beside it (hidden); an existing one inside its own folder, where Triton
    ignores non-numeric subfolders. The version folder and the config swap in whole, so a server
    polling the repository never sees a half-written model.
    """
    new_model = not model_dir.is_dir()
    with staged_folder(repo if new_model else model_dir, model_dir.name) as staging:
        version_dir = _fill(staging, version, artefact, config, meta)
        final_version = model_dir / str(version)
        placed = [final_version / p.relative_to(version_dir) for p in sorted(version_dir.rglob("*")) if p.is_file()]
        placed += [model_dir / LABELS_FILE, model_dir / META_FILE, model_dir / CONFIG_FILE]
        if new_model:
            os.rename(staging, model_dir)  # the whole new model appears at once
            return tuple(placed)
        if final_version.exists():
            # Swap whole folders so the version is never half old, half new; put the old one
            # back if the new one cannot go in (the staging folder is deleted afterwards).
            os.rename(final_version, staging / "replaced")
            try:
                os.rename(version_dir, final_version)
            except BaseException:
                os.rename(staging / "replaced", final_version)
                raise
        else:
            os.rename(version_dir, final_version)
        # The config goes last: Triton in poll mode reloads when it changes.
        for file_name in (LABELS_FILE, META_FILE, CONFIG_FILE):
            os.replace(staging / file_name, model_dir / file_name)
        return tuple(placed)


def _fill(staging: Path, version: int, artefact: ServedArtefact, config, meta) -> Path:
    """The model's files in ``staging``: ``VERSION/model.*`` (and its external weights), labels, rtk's
    metadata and the config, flushed to disk; returns the version folder."""
    version_dir = staging / str(version)
    version_dir.mkdir()
    model_file = version_dir / MODEL_FILES[artefact.platform]
    shutil.copyfile(artefact.path, model_file)
    for location in artefact.extra_files:
        (version_dir / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artefact.path.parent / location, version_dir / location)
    spec = artefact.meta.spec
    (staging / LABELS_FILE).write_text("".join(f"{spec.class_name(i)}\n" for i in range(spec.num_classes)))
    (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (staging / CONFIG_FILE).write_text(config_text(config))
    fsync_tree(staging)
    return version_dir
