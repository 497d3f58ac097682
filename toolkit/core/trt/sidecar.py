"""The JSON sidecar next to every TensorRT engine, and the checks made with it before loading.

A TensorRT plan runs only on the TensorRT version and GPU family it was built for, and carries
no rtk metadata of its own. ``MODEL.engine.json`` records what the engine was built for (TensorRT
version, GPU name, compute capability), what it is (precision, batch profile, I/O tensors, the
source ONNX's sha256, the engine's own sha256) and what it holds (spec and preprocess). Loading
compares it with the running machine and, on a mismatch, says in one sentence what to rebuild.

Nothing here imports TensorRT: the sidecar is readable (``rtk inspect``) on any machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from toolkit.core.artefacts import engine_path_for
from toolkit.core.errors import RtkError
from toolkit.core.outputs import write_atomic
from toolkit.core.precision import ENGINE_PRECISIONS, check_precision
from toolkit.core.spec import ModelSpec, Preprocess

FORMAT = "rtk.engine"
VERSION = 1
DEFAULT_PROFILE = (1, 32, 128)


@dataclass(frozen=True)
class TensorInfo:
    """One I/O tensor of an engine: its name, element type (numpy name) and shape (-1 = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorInfo":
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class TrtPlatform:
    """What a machine offers an engine: the TensorRT version and the GPU.

    Attributes:
        tensorrt_version: ``tensorrt.__version__``, e.g. ``"10.13.0.35"``.
        gpu_name: e.g. ``"NVIDIA H100 80GB HBM3"``.
        compute_capability: ``"major.minor"``, e.g. ``"9.0"``.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {self.compute_capability})"


@dataclass(frozen=True)
class EngineSidecar:
    """Everything rtk knows about a built engine; stored as ``<engine>.json``.

    Attributes:
        tensorrt_version: the TensorRT that built it (engines run only on that version).
        gpu_name: the GPU it was built on.
        compute_capability: that GPU's compute capability, ``"major.minor"``.
        precision: ``"fp16"`` or ``"fp32"``.
        profile: (min, opt, max) batch size of the optimisation profile.
        inputs, outputs: the engine's I/O tensors.
        onnx: the ONNX it was parsed from, relative to the engine's folder when it lies beside it.
        onnx_sha256: that ONNX's sha256 (a changed ONNX means a stale engine).
        engine_sha256: the engine file's sha256 (an engine swapped under its sidecar is refused).
        spec, preprocess: the model's metadata, read from the ONNX.
        build: how it was built (route, workspace, tf32, optimisation level, verbosity, seconds).
        layers: per-layer summary from TensorRT's engine inspector, or ``None``.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple[int, int, int]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    onnx: str
    onnx_sha256: str
    engine_sha256: str
    spec: ModelSpec
    preprocess: Preprocess
    build: dict[str, Any] = field(default_factory=dict)
    layers: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision, ENGINE_PRECISIONS, "engine precision")
        validate_profile(*self.profile)
        if not self.inputs or not self.outputs:
            raise RtkError("an engine sidecar needs at least one input and one output tensor")

    @property
    def min_batch(self) -> int:
        return self.profile[0]

    @property
    def max_batch(self) -> int:
        return self.profile[2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "profile": {"min": self.profile[0], "opt": self.profile[1], "max": self.profile[2]},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "onnx": self.onnx,
            "onnx_sha256": self.onnx_sha256,
            "engine_sha256": self.engine_sha256,
            "spec": self.spec.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "build": dict(self.build),
            "layers": list(self.layers) if self.layers is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "engine sidecar") -> "EngineSidecar":
        """Parse and validate a sidecar dict.

        Raises:
            RtkError: not an rtk engine sidecar, a newer format, or a field missing or malformed.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise RtkError(f"{where} is not an rtk engine sidecar (no \"format\": \"{FORMAT}\")")
        if not isinstance(data.get("version"), int) or data["version"] > VERSION:
            raise RtkError(f"{where} has sidecar version {data.get('version')!r}; this rtk reads version {VERSION}")
        try:
            profile = data["profile"]
            layers = data.get("layers")
            return cls(
                tensorrt_version=_text(data["tensorrt_version"]),
                gpu_name=_text(data["gpu_name"]),
                compute_capability=_text(data["compute_capability"]),
                precision=_text(data["precision"]),
                profile=(int(profile["min"]), int(profile["opt"]), int(profile["max"])),
                inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
                outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
                onnx=_text(data["onnx"]),
                onnx_sha256=_text(data["onnx_sha256"]),
                engine_sha256=_text(data["engine_sha256"]),
                spec=ModelSpec.from_dict(data["spec"]),
                preprocess=Preprocess.from_dict(data["preprocess"]),
                build=dict(data.get("build") or {}),
                layers=tuple(layers) if layers is not None else None,
            )
        except KeyError as exc:
            raise RtkError(f"{where} is missing the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise RtkError(f"{where} has a malformed field: {exc}") from None
        except RtkError as exc:
            raise RtkError(f"{where}: {exc}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def validate_profile(min_batch: int, opt_batch: int, max_batch: int) -> tuple[int, int, int]:
    """Check an optimisation profile's batch sizes.

    Returns:
        ``(min_batch, opt_batch, max_batch)``.

    Raises:
        RtkError: unless ``1 <= min_batch <= opt_batch <= max_batch`` (all integers).
    """
    values = (min_batch, opt_batch, max_batch)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise RtkError(f"batch sizes must be integers, got {values}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise RtkError(
            f"the batch profile must satisfy 1 <= min-batch <= opt-batch <= max-batch, "
            f"got min {min_batch}, opt {opt_batch}, max {max_batch}"
        )
    return values


def profile_for(max_batch: int) -> tuple[int, int, int]:
    """The batch profile rtk builds for a largest batch: (1, max_batch // 2, max_batch).

    TensorRT tunes kernels for the middle (opt) batch; the same rule gives ONNX Runtime's
    TensorRT provider its ``trt_profile_opt_shapes``, so ``trt`` and ``ort-trt`` are timed alike.
    """
    return validate_profile(1, max(1, max_batch // 2), max_batch)


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``MODEL.engine`` → ``MODEL.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(sidecar: EngineSidecar, engine_path: str | os.PathLike) -> Path:
    """Write ``<engine>.json`` atomically; returns its path."""
    text = json.dumps(sidecar.to_dict(), indent=2) + "\n"

    return write_atomic(sidecar_path(engine_path), text)


def has_sidecar(engine_path: str | os.PathLike) -> bool:
    """Whether an engine file has rtk's sidecar beside it: rtk writes one with every engine it builds,
    so an engine without one (built by trtexec, say) is not rtk's to replace."""
    return sidecar_path(engine_path).is_file()


def read_sidecar(engine_path: str | os.PathLike) -> EngineSidecar:
    """Read and validate the sidecar of ``engine_path``.

    Raises:
        RtkError: the sidecar is missing, not JSON, or not a valid rtk engine sidecar.
    """
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    if not path.exists():
        raise RtkError(
            f"{engine_path} has no sidecar {path.name}, so rtk cannot tell what it holds or what it was "
            "built for; build engines with `rtk build MODEL.onnx`"
        )
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RtkError(f"{path} is not valid JSON ({exc}); rebuild the engine with `rtk build`") from None
    return EngineSidecar.from_dict(data, where=str(path))


def source_onnx_path(sidecar: EngineSidecar, engine_path: str | os.PathLike) -> Path:
    """Where the sidecar's source ONNX is, resolved against the engine's folder."""
    onnx = Path(sidecar.onnx)
    return onnx if onnx.is_absolute() else Path(engine_path).parent / onnx


def rebuild_command(sidecar: EngineSidecar, engine_path: str | os.PathLike) -> str:
    """The ``rtk build`` command that rebuilds this engine with the same settings on this machine."""
    engine_path = Path(engine_path)
    onnx = source_onnx_path(sidecar, engine_path)
    lo, opt, hi = sidecar.profile
    args = ["rtk", "build", str(onnx), "--precision", sidecar.precision]
    if sidecar.profile != DEFAULT_PROFILE:
        args += ["--min-batch", str(lo), "--opt-batch", str(opt), "--max-batch", str(hi)]
    build = sidecar.build
    if build.get("workspace") is not None:
        args += ["--workspace", str(build["workspace"])]
    if build.get("tf32") is False:
        args += ["--no-tf32"]
    if build.get("builder_optimization_level", 3) != 3:
        args += ["--builder-optimization-level", str(build["builder_optimization_level"])]
    if build.get("profiling_verbosity", "layer-names-only") != "layer-names-only":
        args += ["--profiling-verbosity", str(build["profiling_verbosity"])]
    if engine_path_for(onnx, sidecar.precision) != engine_path:
        args += ["--output", str(engine_path)]
    return shlex.join(args)


def platform_mismatch(sidecar: EngineSidecar, platform: TrtPlatform) -> str | None:
    """What stops this engine from running here, as a clause, or ``None`` when it can run.

    TensorRT plans are tied to the exact TensorRT version and to the GPU's compute capability;
    another GPU model of the same compute capability can run it (see :func:`gpu_name_warning`).
    """
    same_trt = sidecar.tensorrt_version == platform.tensorrt_version
    same_cc = sidecar.compute_capability == platform.compute_capability
    if same_trt and same_cc:
        return None
    built = (
        f"TensorRT {sidecar.tensorrt_version} on {sidecar.gpu_name} "
        f"(compute capability {sidecar.compute_capability})"
    )
    return f"it was built for {built}, but this machine has {platform.describe()}"


def check_platform(sidecar: EngineSidecar, platform: TrtPlatform, engine_path: str | os.PathLike) -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming the rebuild command.

    Raises:
        RtkError: one sentence: what it was built for, what this machine has, how to rebuild.
    """
    problem = platform_mismatch(sidecar, platform)
    if problem:
        raise RtkError(f"{engine_path} cannot run here: {problem}; rebuild it on this machine with `{rebuild_command(sidecar, engine_path)}`")


def gpu_name_warning(sidecar: EngineSidecar, platform: TrtPlatform) -> str | None:
    """A warning when the GPU model differs but the compute capability matches (it runs, maybe slower)."""
    if sidecar.gpu_name != platform.gpu_name and sidecar.compute_capability == platform.compute_capability:
        return (
            f"engine was tuned on {sidecar.gpu_name} and runs here on {platform.gpu_name}; "
            "rebuild it on this GPU for its best speed"
        )
    return None


def check_engine_file(sidecar: EngineSidecar, engine_path: str | os.PathLike, engine_bytes: bytes) -> None:
    """Refuse an engine file that is not the one its sidecar describes.

    Raises:
        RtkError: the engine's sha256 differs from the sidecar's (rebuilt, replaced or truncated).
    """
    if hashlib.sha256(engine_bytes).hexdigest() != sidecar.engine_sha256:
        raise RtkError(
            f"{engine_path} does not match its sidecar {sidecar_path(engine_path).name} (sha256 differs: the engine "
            f"was replaced, truncated or the sidecar edited); rebuild it with `{rebuild_command(sidecar, engine_path)}`"
        )


def check_engine_tensors(
    sidecar: EngineSidecar,
    engine_path: str | os.PathLike,
    inputs: Iterable[TensorInfo],
    outputs: Iterable[TensorInfo],
    profile: tuple[int, int, int] | None,
) -> None:
    """Refuse a sidecar that disagrees with what the deserialised engine reports.

    Args:
        inputs, outputs: the engine's tensors as TensorRT reports them.
        profile: the engine's (min, opt, max) batch of profile 0, or ``None`` for a static batch.

    Raises:
        RtkError: names, dtypes or the batch profile differ.
    """
    found = {
        "inputs": tuple(inputs),
        "outputs": tuple(outputs),
        "profile": tuple(profile) if profile else (sidecar.inputs[0].shape[0],) * 3,
    }
    recorded = {"inputs": sidecar.inputs, "outputs": sidecar.outputs, "profile": tuple(sidecar.profile)}
    for key in ("inputs", "outputs", "profile"):
        a, b = recorded[key], found[key]
        if key != "profile":
            a = [(t.name, t.dtype) for t in a]
            b = [(t.name, t.dtype) for t in b]
        if list(a) != list(b):
            raise RtkError(
                f"{sidecar_path(engine_path).name} says {key} {_brief(a)} but {Path(engine_path).name} has {_brief(b)}; "
                f"the sidecar was edited or belongs to another engine: rebuild with `{rebuild_command(sidecar, engine_path)}`"
            )


def _brief(value: Any) -> str:
    return json.dumps(value if not isinstance(value, tuple) else list(value))


def summarize_layers(info: str | Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """Per-layer summary from TensorRT's engine inspector JSON (``get_engine_information``).

    With ``ProfilingVerbosity.DETAILED`` each layer is an object (name, layer type, tactic,
    output formats); with ``LAYER_NAMES_ONLY`` it is a bare name.

    Returns:
        One dict per layer: ``name`` and, where known, ``type``, ``tactic``, ``output`` (format/dtype).
    """
    data = json.loads(info) if isinstance(info, str) else info
    layers = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):
            layers.append({"name": layer})
            continue
        entry = {"name": layer.get("Name", "?"), "type": layer.get("LayerType")}
        tactic = layer.get("TacticName") or layer.get("TacticValue")
        if tactic not in (None, ""):
            entry["tactic"] = tactic
        outputs = layer.get("Outputs") or []
        if outputs and isinstance(outputs[0], dict):
            entry["output"] = _output_format(outputs[0])
        layers.append({k: v for k, v in entry.items() if v is not None})
    return tuple(layers)


def _output_format(tensor: Mapping[str, Any]) -> str | None:
    """A layer output's format and dtype: one ``Format/Datatype`` field, or (newer inspectors) two."""
    if tensor.get("Format/Datatype"):
        return tensor["Format/Datatype"]
    parts = [tensor.get(key) for key in ("Format", "DataType", "Datatype")]
    return " / ".join(str(p) for p in parts if p) or None
