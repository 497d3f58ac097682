"""ONNX → TensorRT engine: ``build_engine``, ``ensure_engine`` and the choice of fp16 route.

TensorRT 10 builds an fp16 engine from the fp32 ONNX with ``BuilderFlag.FP16`` (weak typing).
TensorRT 11 removed that flag: networks are always strongly typed, so an fp16 engine comes
from the fp16 ONNX (``MODEL.fp16.onnx``: fp16 weights and compute, fp32 I/O). Which TensorRT
is installed is detected with ``hasattr(trt.BuilderFlag, "FP16")``, never from the version
number alone.

An int8 engine is built from the calibrated QDQ ONNX (``MODEL.int8.onnx``), whose Q/DQ nodes
carry every scale: TensorRT 10 takes explicit quantization only with ``BuilderFlag.INT8`` set
(plus ``FP16`` for the layers left in float); TensorRT 11 has no such flag and builds the QDQ
graph strongly typed, as it is.

Every build writes ``MODEL.engine`` and ``MODEL.engine.json`` (see :mod:`toolkit.core.trt.sidecar`)
atomically: a failed or interrupted build leaves neither behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.int8 import refuse_u8_for_tensorrt
from exporters.onnx import checkpoint_options_of, ensure_onnx
from toolkit.core.artefacts import (
    CHECKPOINT_SUFFIXES,
    ENGINE_SUFFIXES,
    engine_path_for,
    sha256_file,
)
from toolkit.core.console import err_console, warn
from toolkit.core.errors import RtkError
from toolkit.core.files import readable_file
from toolkit.core.hub import is_hub_folder
from toolkit.core.onnx_graph import foreign_onnx_error, load_onnx_graph, metadata_dict, onnx_precision
from toolkit.core.outputs import Output, check_outputs, write_atomic
from toolkit.core.precision import ENGINE_PRECISIONS, check_precision
from toolkit.core.spec import ArtefactMeta
from toolkit.core.trt import library as trt_library
from toolkit.core.trt.sidecar import (
    DEFAULT_PROFILE,
    EngineSidecar,
    TrtPlatform,
    has_sidecar,
    platform_mismatch,
    profile_for,
    read_sidecar,
    sidecar_path,
    source_onnx_path,
    summarize_layers,
    write_sidecar,
)
from toolkit.core.validation import COUNT, OPTIMIZATION_LEVEL, WORKSPACE, UsageError

__all__ = [
    "BuildOptions",
    "BuildRoute",
    "build_engine",
    "choose_route",
    "ensure_engine",
    "onnx_weight_precision",
    "parse_workspace",
    "resolve_fp16_onnx",
]

#: ``--profiling-verbosity`` values → TensorRT ``ProfilingVerbosity`` member names.
PROFILING_VERBOSITY = {"layer-names-only": "LAYER_NAMES_ONLY", "detailed": "DETAILED", "none": "NONE"}

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip


def parse_workspace(text: str) -> int:
    """A memory size such as ``"4GiB"``, ``"512MiB"``, ``"1.5G"`` or ``"1073741824"`` in bytes.

    ``K/M/G/T`` and ``KiB/MiB/GiB/TiB`` are binary (powers of 1024), ``KB/MB/GB/TB`` decimal.

    Raises:
        UsageError: not a positive size, or one no machine has (beyond 2**63 bytes).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise UsageError(f"--workspace {text!r} is not a size; write it like 4GiB, 512MiB or 1073741824 (bytes)")
    size = float(match.group(1)) * _UNITS[unit]  # a string of 400 digits is inf here, which int() refuses
    if not 1 <= size < 2**63:
        raise UsageError(f"--workspace must be from 1 byte to 8 EiB, got {text!r}")
    return int(size)




@dataclass(frozen=True)
class BuildOptions:
    """How to build an engine.

    Attributes:
        precision: ``"fp16"`` (default) or ``"fp32"``.
        min_batch, opt_batch, max_batch: the optimisation profile's batch sizes; TensorRT tunes
            kernels for ``opt_batch`` and the engine accepts ``min_batch..max_batch``.
        workspace: workspace memory pool limit in bytes; ``None`` = TensorRT's default (all of
            the GPU's memory).
        timing_cache: file read before the build (when it exists) and updated after it, so
            rebuilds on the same GPU and TensorRT skip kernel timing.
        tf32: allow TF32 for fp32 layers (TensorRT's default); turn off for strict fp32 parity.
        builder_optimization_level: 0..5; higher searches more tactics (slower build, maybe
            faster engine); TensorRT's default is 3.
        profiling_verbosity: ``"layer-names-only"``, ``"detailed"`` (per-layer tactics and
            formats for ``rtk inspect``) or ``"none"``.
    """

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 128
    workspace: int | None = None
    timing_cache: Path | None = None
    tf32: bool = True
    builder_optimization_level: int = 3
    profiling_verbosity: str = "layer-names-only"

    def __post_init__(self) -> None:
        check_precision(self.precision, ENGINE_PRECISIONS)
        for flag, value in (("--min-batch", self.min_batch), ("--opt-batch", self.opt_batch), ("--max-batch", self.max_batch)):
            COUNT.check(value, flag)
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise UsageError(
                f"the batch profile must satisfy 1 <= min-batch <= opt-batch <= max-batch, "
                f"got min {self.min_batch}, opt {self.opt_batch}, max {self.max_batch}"
            )
        WORKSPACE.check(self.workspace, "the workspace (bytes)")
        OPTIMIZATION_LEVEL.check(self.builder_optimization_level, "--builder-optimization-level")
        if self.profiling_verbosity not in PROFILING_VERBOSITY:
            raise UsageError(
                f"profiling verbosity must be one of {', '.join(PROFILING_VERBOSITY)}, got {self.profiling_verbosity!r}"
            )
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
            if self.timing_cache.is_dir():
                raise RtkError(f"timing cache {self.timing_cache} is a folder; name a file in it, e.g. {self.timing_cache / 'timing.cache'}")

    @property
    def profile(self) -> tuple[int, int, int]:
        return (self.min_batch, self.opt_batch, self.max_batch)

    def build_record(self) -> dict[str, Any]:
        """The settings a rebuild must repeat, as the sidecar's ``build`` section stores them."""
        return {
            "workspace": self.workspace,
            "tf32": self.tf32,
            "builder_optimization_level": self.builder_optimization_level,
            "profiling_verbosity": self.profiling_verbosity,
        }

    @classmethod
    def from_sidecar(cls, sidecar: EngineSidecar) -> "BuildOptions":
        """The options an engine was built with (profile and :meth:`build_record`), to rebuild it alike."""
        lo, opt, hi = sidecar.profile
        defaults = cls()
        build = sidecar.build
        return cls(
            precision=sidecar.precision, min_batch=lo, opt_batch=opt, max_batch=hi,
            workspace=build.get("workspace", defaults.workspace),
            tf32=build.get("tf32", defaults.tf32),
            builder_optimization_level=build.get("builder_optimization_level", defaults.builder_optimization_level),
            profiling_verbosity=build.get("profiling_verbosity", defaults.profiling_verbosity),
        )


@dataclass(frozen=True)
class BuildRoute:
    """How a precision is reached with the installed TensorRT.

    Attributes:
        name: ``"fp32"``, ``"builder-flag"`` (TensorRT 10: fp32 ONNX + ``BuilderFlag.FP16``) or
            ``"fp16-onnx"`` (strongly typed network parsed from the fp16 ONNX).
        strongly_typed: create the network with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.
        fp16_flag: set ``BuilderFlag.FP16``.
        needs_fp16_onnx: the given ONNX is fp32 and its fp16 sibling must be used instead.
        int8_flag: set ``BuilderFlag.INT8`` (TensorRT 10, a QDQ graph).
    """

    name: str
    strongly_typed: bool
    fp16_flag: bool
    needs_fp16_onnx: bool = False
    int8_flag: bool = False


def choose_route(precision: str, onnx_precision: str, builder_flags: Any) -> BuildRoute:
    """Pick the fp16 route for the installed TensorRT.

    Args:
        precision: the engine precision asked for, ``"fp16"`` or ``"fp32"``.
        onnx_precision: the given ONNX's weight precision (:func:`onnx_weight_precision`).
        builder_flags: ``tensorrt.BuilderFlag`` (or any object with the same attribute names):
            TensorRT 10 has ``FP16``, TensorRT 11 does not.

    Returns:
        The route.

    Raises:
        RtkError: an fp32 engine was asked for from an fp16 ONNX; int8 from a float ONNX or a
            float engine from a QDQ one.
    """
    if "int8" in (precision, onnx_precision):
        return _int8_route(precision, onnx_precision, builder_flags)
    if onnx_precision not in ENGINE_PRECISIONS:
        raise RtkError(f"TensorRT engines are built from fp32 or fp16 ONNX files, not {onnx_precision}")
    if precision == "fp32":
        if onnx_precision == "fp16":
            raise RtkError("an fp32 engine needs the fp32 ONNX (MODEL.onnx), not the fp16 one; or build with --precision fp16")
        return BuildRoute("fp32", strongly_typed=False, fp16_flag=False)
    if onnx_precision == "fp16":
        # The types are already in the graph: strong typing keeps them exactly as exported.
        return BuildRoute("fp16-onnx", strongly_typed=True, fp16_flag=False)
    if hasattr(builder_flags, "FP16"):
        return BuildRoute("builder-flag", strongly_typed=False, fp16_flag=True)
    return BuildRoute("fp16-onnx", strongly_typed=True, fp16_flag=False, needs_fp16_onnx=True)


def _int8_route(precision: str, onnx_precision: str, builder_flags: Any) -> BuildRoute:
    if onnx_precision != "int8":
        raise RtkError(
            f"an int8 engine is built from a calibrated QDQ ONNX, not an {onnx_precision} one: make it with "
            "`rtk export CHECKPOINT --precision int8 --calib DATA` and build MODEL.int8.onnx"
        )
    if precision != "int8":
        raise RtkError(f"this ONNX is quantized (QDQ), so it builds an int8 engine, not {precision}; build it with --precision int8")
    if hasattr(builder_flags, "INT8"):
        return BuildRoute("qdq-int8-flag", strongly_typed=False, fp16_flag=hasattr(builder_flags, "FP16"), int8_flag=True)
    return BuildRoute("qdq-strongly-typed", strongly_typed=True, fp16_flag=False)


def onnx_weight_precision(path: str | os.PathLike) -> str:
    """The weight precision of an ONNX file: ``"fp16"``, ``"bf16"`` or ``"fp32"``.

    Raises:
        RtkError: the file is not a readable ONNX model.
    """

    return onnx_precision(load_onnx_graph(path))


def resolve_fp16_onnx(onnx_path: str | os.PathLike, tensorrt_version: str = "11") -> Path:
    """The fp16 ONNX to build from when only the fp32 one was given (TensorRT 11).

    A checkpoint beside the ONNX (``MODEL.pth``, or a Hub folder ``MODEL/``) is the source of truth:
    the fp16 ONNX is exported or refreshed from it, with the same weights (EMA or raw) as the fp32
    one. Without one, an existing ``MODEL.fp16.onnx`` is used.

    Raises:
        RtkError: neither exists; the message says how to make the fp16 ONNX.
    """
    onnx_path = Path(onnx_path)
    base = onnx_path.name[: -len(".onnx")] if onnx_path.name.endswith(".onnx") else onnx_path.stem
    base = base[: -len(".fp32")] if base.endswith(".fp32") else base
    for checkpoint in [onnx_path.with_name(base + suffix) for suffix in CHECKPOINT_SUFFIXES] + [onnx_path.with_name(base)]:
        if checkpoint.is_file() or is_hub_folder(checkpoint):  # MODEL.pth, or the Hub folder MODEL/
            return Path(ensure_onnx(checkpoint, "fp16", checkpoint_options_of(onnx_path, checkpoint)))
    candidate = onnx_path.with_name(base + ".fp16.onnx")
    if candidate.exists():
        if candidate.stat().st_mtime < onnx_path.stat().st_mtime:
            warn(f"{candidate.name} is older than {onnx_path.name}; re-export it if the model changed")
        return candidate
    raise RtkError(
        f"TensorRT {tensorrt_version} builds fp16 engines only from an fp16 ONNX, and {candidate.name} is not next to "
        f"{onnx_path.name}: create it with `rtk export {onnx_path.with_name(base + '.pth')} --precision fp16`, "
        "or build an fp32 engine with --precision fp32"
    )


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    options: BuildOptions = BuildOptions(),
    show_progress: bool = True,
    device: str | None = None,
    meta: "ArtefactMeta | None" = None,
) -> Path:
    """Build a TensorRT engine and its sidecar from an ONNX file.

    Args:
        onnx_path: an rtk-exported ONNX (fp32 or fp16; its metadata gives spec and preprocess).
        output: the engine path; default :func:`engine_path_for` (``MODEL.engine`` for fp16).
        options: precision, batch profile, workspace, timing cache and builder settings.
        show_progress: show TensorRT's build phases (or a spinner) on stderr.
        device: the GPU to build on, ``"cuda:N"``; default the current CUDA device. An engine
            runs only on the GPU family it was built on, so this is the GPU that will run it.
        meta: the spec and preprocessing of an ONNX file that carries none
            (:func:`toolkit.core.foreign_onnx.foreign_meta`); the sidecar records them.

    Returns:
        The engine path; the sidecar is ``<engine>.json``.

    Raises:
        RtkError: missing file or TensorRT, no GPU, parser errors (all of them), an input that is
            not NCHW or disagrees with the metadata, a fixed batch outside the profile, a failed build.
    """
    onnx_path = readable_file(onnx_path, "an ONNX file")
    output = _checked_output(onnx_path, output, options)
    refuse_u8_for_tensorrt(onnx_path)
    trt = trt_library.import_tensorrt("building a TensorRT engine")
    dev = trt_library.open_device(device)
    platform = TrtPlatform(str(trt.__version__), dev.name(), dev.capability())
    route = choose_route(options.precision, onnx_weight_precision(onnx_path), trt.BuilderFlag)
    source = resolve_fp16_onnx(onnx_path, trt.__version__) if route.needs_fp16_onnx else onnx_path

    stored = metadata_dict(load_onnx_graph(source))  # an ONNX file's own spec wins; a foreign one needs ``meta``
    if stored is not None:
        meta = ArtefactMeta.from_dict(stored)
    elif meta is None:
        raise foreign_onnx_error(source)
    log = trt_library.logger(trt)
    with dev.activate():  # TensorRT builds for, and deserialises on, the current CUDA device
        started = time.perf_counter()
        plan, config = _build_plan(trt, log, source, meta, route, options, show_progress)
        seconds = time.perf_counter() - started
        inputs, outputs, profile, layers = _read_back(trt, dev, log, plan, output, options)
    data = memoryview(plan)
    sidecar = EngineSidecar(
        tensorrt_version=platform.tensorrt_version,
        gpu_name=platform.gpu_name,
        compute_capability=platform.compute_capability,
        precision=options.precision,
        profile=profile,
        inputs=inputs,
        outputs=outputs,
        onnx=os.path.relpath(source.resolve(), output.resolve().parent),
        onnx_sha256=sha256_file(source),
        engine_sha256=hashlib.sha256(data).hexdigest(),
        spec=meta.spec,
        preprocess=meta.preprocess,
        build={"route": route.name, **options.build_record(), "seconds": round(seconds, 1)},
        layers=layers,
    )
    _write_engine(output, data, sidecar)
    if options.timing_cache is not None:
        write_atomic(options.timing_cache, memoryview(config.get_timing_cache().serialize()))
    return output


def _read_back(trt, dev, log, plan, output: Path, options: "BuildOptions"):
    """Deserialise the fresh plan: it proves the engine loads here, and gives its I/O tensors,
    profile and (unless ``none`` was asked for) per-layer summary as TensorRT sees them."""
    since = log.mark()
    engine = trt_library.deserializer(trt, dev).deserialize_cuda_engine(plan)
    if engine is None:
        raise RtkError(f"TensorRT built {output.name} but cannot load it: {log.last_error(since)}")
    inputs, outputs = trt_library.engine_tensors(trt, engine)
    layers = None
    if options.profiling_verbosity != "none":
        inspector = engine.create_engine_inspector()
        layers = summarize_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    profile = trt_library.engine_profile(engine, inputs[0].name) or (inputs[0].shape[0],) * 3
    return inputs, outputs, profile, layers


def _write_engine(output: Path, data: memoryview, sidecar: EngineSidecar) -> None:
    """The engine and its sidecar, each atomically; an engine whose sidecar cannot be written is removed."""
    write_atomic(output, data)
    try:
        write_sidecar(sidecar, output)
    except BaseException:
        output.unlink(missing_ok=True)  # an engine without its sidecar must not be left behind
        raise


def ensure_engine(
    onnx_path: str | os.PathLike, precision: str = "fp16", *, device: str | None = None, max_batch: int | None = None,
    meta: "ArtefactMeta | None" = None,
) -> Path:
    """The engine next to an ONNX file, built when missing, stale, or built for another machine.

    An existing engine is reused when its sidecar matches this TensorRT and GPU, its source ONNX
    still has the recorded sha256, the given ONNX is not newer than it, and its profile reaches
    ``max_batch``. A rebuild keeps the engine's profile and build settings (workspace, TF32,
    optimisation level, verbosity), widened to ``max_batch`` when that is larger.

    Args:
        onnx_path: the fp32 ONNX (or fp16 for an fp16 engine).
        precision: ``"fp16"`` or ``"fp32"``.
        device: the GPU to build on and check against (``"cuda:N"``).
        max_batch: the largest batch the engine must take; a new engine gets
            :func:`toolkit.core.trt.sidecar.profile_for` (``max_batch``), the default profile otherwise.
        meta: the spec of an ONNX file that carries none, as for :func:`build_engine`.

    Returns:
        ``MODEL.engine`` (fp16) or ``MODEL.fp32.engine``.
    """
    onnx_path = Path(onnx_path)
    output = engine_path_for(onnx_path, precision)
    options = BuildOptions(precision, *(profile_for(max_batch) if max_batch else DEFAULT_PROFILE))
    if output.exists() and sidecar_path(output).exists():
        try:
            sidecar = read_sidecar(output)
        except RtkError:
            sidecar = None
        if sidecar is not None and sidecar.precision == precision:
            options = BuildOptions.from_sidecar(sidecar)
            source = source_onnx_path(sidecar, output)
            fresh = (
                platform_mismatch(sidecar, trt_library.current_platform(device)) is None
                and source.exists()
                and sha256_file(source) == sidecar.onnx_sha256
                and onnx_path.stat().st_mtime <= output.stat().st_mtime
            )
            if max_batch and max_batch > sidecar.max_batch:
                lo, opt, _ = profile_for(max_batch)
                options = dataclasses.replace(options, min_batch=min(lo, options.min_batch), opt_batch=opt, max_batch=max_batch)
                fresh = False
            if fresh:
                return output
    return build_engine(onnx_path, output, options, device=device, meta=meta)


def _checked_output(onnx_path: Path, output: str | os.PathLike | None, options: BuildOptions) -> Path:
    """The engine's path, once the output guard has let it, its sidecar and the timing cache pass:
    none is the ONNX read, and an engine without rtk's sidecar (trtexec's) is never replaced."""
    output = Path(output) if output is not None else engine_path_for(onnx_path, options.precision)
    check_outputs(
        [
            Output(output, "--output", ENGINE_SUFFIXES, "a TensorRT engine", written_by_rtk=has_sidecar),
            Output(sidecar_path(output), "--output"),
            Output(options.timing_cache, "--timing-cache") if options.timing_cache else None,
        ],
        [onnx_path],
    )
    return output


def _build_plan(trt, log, source: Path, meta, route: BuildRoute, options: BuildOptions, show_progress: bool):
    """Parse the ONNX, configure the builder and build; returns (serialised plan, builder config)."""
    since = log.mark()
    builder = trt.Builder(log.ilogger)
    flags = 0
    if route.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log.ilogger)
    if not parser.parse_from_file(str(source)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        listed = "; ".join(f"({i + 1}) {e}" for i, e in enumerate(errors)) or log.last_error(since)
        raise RtkError(f"TensorRT's ONNX parser rejected {source} with {len(errors)} error(s): {listed}")

    config = builder.create_builder_config()
    if options.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace)
    if route.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if route.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    config.builder_optimization_level = options.builder_optimization_level
    config.profiling_verbosity = getattr(trt.ProfilingVerbosity, PROFILING_VERBOSITY[options.profiling_verbosity])
    _add_profile(builder, network, config, source, meta, options, log)
    _set_timing_cache(config, options.timing_cache)

    since = log.mark()
    plan = _run_builder(trt, builder, network, config, show_progress)
    if plan is None:
        raise RtkError(f"TensorRT could not build an engine from {source}: {log.last_error(since)}")
    return plan, config


def _parser_error(error: Any) -> str:
    node = error.node_name() if hasattr(error, "node_name") else ""
    where = f" at node {node!r}" if node else ""
    return f"{error.code()}{where}: {error.desc()}"


def _add_profile(builder, network, config, source: Path, meta, options: BuildOptions, log) -> None:
    """Check the network's single NCHW input against the metadata and add the batch profile."""
    if network.num_inputs != 1:
        raise RtkError(f"{source} has {network.num_inputs} inputs; rtk engines take one NCHW image batch")
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)
    chw = (meta.spec.in_chans, *meta.preprocess.input_size)
    if len(shape) != 4:
        raise RtkError(f"{source}'s input {tensor.name!r} has shape {shape}; rtk engines need an NCHW input")
    for got, want in zip(shape[1:], chw):
        if got not in (-1, want):
            raise RtkError(f"{source}'s input {tensor.name!r} has shape {shape} but its metadata says (N, {', '.join(map(str, chw))})")
    if shape[0] != -1:
        fixed = shape[0]
        if options.profile != (fixed,) * 3:
            raise RtkError(
                f"{source} has a fixed batch size of {fixed}: build it with --min-batch {fixed} --opt-batch {fixed} "
                f"--max-batch {fixed}, or export it again with a dynamic batch axis"
            )
        return
    profile = builder.create_optimization_profile()
    since = log.mark()
    profile.set_shape(tensor.name, (options.min_batch, *chw), (options.opt_batch, *chw), (options.max_batch, *chw))
    if config.add_optimization_profile(profile) < 0:
        raise RtkError(
            f"TensorRT refused the batch profile {options.min_batch}/{options.opt_batch}/{options.max_batch} for "
            f"{source}'s input {tensor.name!r}: {log.last_error(since)}"
        )


def _set_timing_cache(config, path: Path | None) -> None:
    """Start from the timing cache file when there is one; a cache from another GPU/TensorRT is replaced."""

    data = path.read_bytes() if path is not None and path.exists() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        warn(f"timing cache {path} was made by another TensorRT or GPU (or is damaged); starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _run_builder(trt, builder, network, config, show_progress: bool):
    """``build_serialized_network`` with TensorRT's build phases shown as progress bars on stderr."""
    if not show_progress:
        return builder.build_serialized_network(network, config)

    if not hasattr(trt, "IProgressMonitor"):
        with err_console.status("building the TensorRT engine (minutes for large models)…"):
            return builder.build_serialized_network(network, config)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as progress:  # fmt: skip
        config.progress_monitor = _progress_monitor(trt, progress)
        return builder.build_serialized_network(network, config)


def _progress_monitor(trt, progress):
    """A ``tensorrt.IProgressMonitor`` that mirrors nested build phases as rich progress bars."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._tasks: dict[str, Any] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self._depth[phase_name] = depth
            self._tasks[phase_name] = progress.add_task("  " * depth + phase_name, total=max(num_steps, 1))

        def step_complete(self, phase_name, step):
            task = self._tasks.get(phase_name)
            if task is not None:
                progress.update(task, completed=step + 1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            task = self._tasks.pop(phase_name, None)
            if task is not None:
                progress.remove_task(task)

    return _Monitor()
