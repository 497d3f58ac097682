"""``engines.load``: from an artefact path (or a checkpoint) to a ready :class:`~engines.base.Engine`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.artefacts import artefact_kind
from toolkit.errors import RtkError

if TYPE_CHECKING:
    from engines.base import Engine
    from toolkit.checkpoint import Checkpoint

#: Engine names accepted by ``engine=`` / ``--engine``.
ENGINE_NAMES = ("eager", "ort", "ort-fp16", "ort-cuda", "ort-trt", "trt")
#: ONNX Runtime engine names and the execution provider each asks for.
ORT_PROVIDERS = {"ort": "cpu", "ort-fp16": "cpu", "ort-cuda": "cuda", "ort-trt": "trt"}
#: The runtime each artefact kind gets when no engine is named.
DEFAULT_ENGINE = {"checkpoint": "eager", "onnx": "ort", "engine": "trt"}


def load(
    source: "str | os.PathLike | Checkpoint",
    engine: str | None = None,
    device: str = "cpu",
    precision: str | None = None,
    **options: Any,
) -> "Engine":
    """Load an artefact (or a loaded checkpoint) as an engine.

    Args:
        source: a checkpoint, ONNX file or TensorRT engine path; or a
            :class:`toolkit.checkpoint.Checkpoint`.
        engine: runtime name (one of :data:`ENGINE_NAMES`); by default chosen from the artefact.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``; ``None`` is the engine's own default: fp32 for
            eager, the exported precision for an ONNX file, fp16 for ``ort-trt`` (the TensorRT provider
            adds fp16 kernels to an fp32 graph), the built precision for a TensorRT engine. Eager runs
            fp16/bf16 under autocast.
        **options: runtime options: eager ``channels_last``, ``compile``; ort ``threads``,
            ``graph_optimization``, ``max_batch``; ``meta`` (an ArtefactMeta) for a foreign ONNX.

    Returns:
        The engine; use it as a context manager or call ``close()``.

    Raises:
        RtkError: unknown engine, an artefact the engine cannot run, a missing optional package.
    """
    from toolkit.checkpoint import Checkpoint, load_checkpoint

    if isinstance(source, Checkpoint):
        ckpt, kind, path = source, "checkpoint", source.path
    else:
        path = Path(source)
        kind = artefact_kind(path)
        ckpt = None
    engine = _check_engine(engine, kind, path)
    if engine == "eager":
        from engines.eager import EagerEngine

        ckpt = ckpt or load_checkpoint(path)
        return EagerEngine(ckpt.build_model(), ckpt.spec, ckpt.preprocess, device, precision or "fp32", **options)

    if engine in ORT_PROVIDERS:
        if kind != "onnx":
            raise RtkError(f"the {engine} engine runs ONNX files, not {path.name if path else 'a checkpoint'}; export it first with `rtk export {path}`")
        from engines.ort import OrtEngine

        provider = ORT_PROVIDERS[engine]
        if precision == "bf16" or (precision == "fp16" and provider == "cpu" and not path.name.endswith(".fp16.onnx")):
            raise RtkError(
                f"{path.name} runs at the precision it was exported with; for fp16 on ONNX Runtime export an fp16 ONNX "
                "(rtk export --precision fp16) and load MODEL.fp16.onnx"
            )
        if provider == "trt":
            options.setdefault("fp16", precision != "fp32")
        engine_obj = OrtEngine(path, provider=provider, device=device, **options)
        if engine == "ort-fp16" and engine_obj.precision != "fp16":
            engine_obj.close()
            raise RtkError(f"ort-fp16 runs an fp16 ONNX and {path.name} holds fp32 weights; export one with `rtk export --precision fp16`")
        return engine_obj

    # engine == "trt": an ONNX or checkpoint gets its fp16 engine built (and cached) first.
    if path is None:
        raise RtkError("the trt engine needs an artefact on disk (a checkpoint, ONNX or engine file)")
    from engines.trt import TrtEngine

    return TrtEngine(prepare(path, "trt"), device)


def prepare(source: str | os.PathLike, engine: str | None = None, precision: str | None = None) -> Path:
    """The artefact ``engine`` runs for ``source``, exported or built next to it when missing or stale.

    ``eager`` runs the checkpoint itself. The ONNX Runtime engines run an ONNX file as given; for
    a checkpoint, ``MODEL.onnx``, or ``MODEL.fp16.onnx`` for ``ort-fp16`` and for fp16 on ``ort`` /
    ``ort-cuda`` (the TensorRT provider makes its own fp16 kernels from the fp32 graph). ``trt``
    runs an engine file as given; an ONNX or checkpoint gets ``MODEL.engine`` (fp16 unless
    ``precision`` says fp32) built from its fp32 ONNX. Exports and builds are cached: a second
    call returns the same file without work while it is newer than its source.

    Args:
        source: a checkpoint, ONNX file or TensorRT engine.
        engine: a name from :data:`ENGINE_NAMES`; by default the artefact's own runtime.
        precision: ``fp32``/``fp16`` when the caller needs that precision; ``None`` takes an ONNX
            file as it is.

    Returns:
        The path to load with :func:`load`.

    Raises:
        RtkError: the engine cannot run this kind of artefact, or an ONNX file of another precision
            was named; TensorRT missing (checked before any export, which can take minutes).
    """
    path = Path(source)
    kind = artefact_kind(path)
    engine = _check_engine(engine, kind, path)
    if engine == "eager":
        return path
    if engine == "trt":
        if kind == "engine":
            return path
        from toolkit.errors import require

        require("tensorrt", "the trt engine")
        from exporters.trt import ensure_engine

        return ensure_engine(_onnx_for(path, kind, fp16=False), precision or "fp16")
    if kind == "engine":
        raise RtkError(f"the {engine} engine runs ONNX files, and {path.name} is a TensorRT engine (run it with --engine trt)")
    fp16 = engine == "ort-fp16" or (precision == "fp16" and engine != "ort-trt")
    if kind == "onnx" and precision is not None and engine != "ort-trt" and fp16 != path.name.endswith(".fp16.onnx"):
        want = "an fp16 (.fp16.onnx)" if fp16 else "an fp32"
        raise RtkError(f"{engine} at {precision} needs {want} ONNX file and {path.name} is not one; pass the checkpoint instead")
    return _onnx_for(path, kind, fp16)


def _check_engine(engine: str | None, kind: str, path: Path | None) -> str:
    """The engine to use (the artefact's default when ``None``), refusing unknown names and eager on non-checkpoints."""
    engine = engine or DEFAULT_ENGINE[kind]
    if engine not in ENGINE_NAMES:
        raise RtkError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_NAMES)}")
    if engine == "eager" and kind != "checkpoint":
        raise RtkError(f"the eager engine runs checkpoints (.pth/.pt), not {path.name if path else 'this artefact'}")
    return engine


def _onnx_for(path: Path, kind: str, fp16: bool) -> Path:
    if kind != "checkpoint":
        return path
    from exporters.onnx import ensure_onnx

    return Path(ensure_onnx(path, "fp16" if fp16 else "fp32"))
