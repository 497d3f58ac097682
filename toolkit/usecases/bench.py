"""``rtk bench``: open every engine asked for on one model, and time them side by side.

The timing is the harness's (:func:`benchmarks.harness.run_benchmark`), on engines opened here the
way every command opens them (:func:`toolkit.usecases.opening.open_engine`). An engine that
cannot run here (no GPU, no TensorRT, an artefact it does not run, a provider that fell back to
another) gives one ``skipped`` row with the reason, and the others are still timed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from benchmarks.harness import BASELINE, BenchOptions, BenchReport, BenchResult, fp32_counterpart, require_device, run_benchmark
from engines.base import Engine
from engines.names import DEFAULT_ENGINE, EngineName, parse_engine, parse_engines
from engines.ort_install import gpu_install_hint
from engines.request import EngineRequest
from toolkit.core.artefacts import artefact_kind
from toolkit.core.errors import RtkError
from toolkit.core.spec import ArtefactMeta
from toolkit.usecases.opening import open_engine


def benchmark_model(
    model: str | os.PathLike, options: BenchOptions, progress: Callable[[BenchResult], None] | None = None, meta: ArtefactMeta | None = None,
) -> BenchReport:
    """Benchmark every engine in ``options`` on ``model`` across the batch sizes.

    Eager fp32 joins as the baseline of every speed-up when the model is a checkpoint and
    ``options.baseline`` is set, and so does the fp32 engine of each reduced precision's own
    runtime (``ort`` for ``ort-int8``), when that precision runs here, for its ratio to fp32.

    Args:
        model: a checkpoint, ONNX file or TensorRT engine.
        options: which engines, and what to time (:class:`~benchmarks.harness.BenchOptions`).
        progress: called with each finished row (for live output).
        meta: the spec and preprocessing of an ONNX file that carries none (:mod:`toolkit.core.foreign_onnx`).

    Returns:
        The report: model, settings, environment and one row per engine, batch size and I/O mode.

    Raises:
        RtkError: the model is missing or of no known kind; CUDA asked for on a machine without it.
    """
    model = Path(model)
    kind = artefact_kind(model)
    require_device(options.device)
    asked = list(parse_engines(options.engines or DEFAULT_ENGINE[kind], options.precision))
    choices = with_baselines(asked) if options.baseline and kind == "checkpoint" else asked
    emit = progress or (lambda row: None)
    engines: dict[str, Engine] = {}
    skipped: list[BenchResult] = []
    try:
        # An fp32 engine added only as a reduced precision's own-runtime baseline is opened only when
        # that engine opened, and left out silently otherwise.
        added = [c for c in choices if c not in asked and str(c) != BASELINE]
        for choice in [c for c in choices if c not in added] + added:
            if choice in added and not any(fp32_counterpart(name) == str(choice) for name in engines):
                continue
            try:
                engines[str(choice)] = _open(model, choice, options, meta)
            except RtkError as exc:
                skipped.append(BenchResult(str(choice), choice.resolved_precision, options.device, "skipped", reason=str(exc)))
                emit(skipped[-1])
        timed = [engines[str(c)] for c in choices if str(c) in engines]
        ran = set(engines) | {r.engine for r in skipped}
        recorded = [str(c) for c in choices if c in asked or str(c) == BASELINE or str(c) in ran]
        about = {"path": str(model), "name": model.name, "kind": kind}
        return run_benchmark(timed, options, progress, skipped=skipped, model=about, asked=recorded)
    finally:
        for engine in engines.values():
            engine.close()


def with_baselines(choices: list[EngineName]) -> list[EngineName]:
    """``choices`` with eager fp32 first and, before each reduced precision, its runtime's fp32 engine
    when it is not asked for already."""
    out = [parse_engine(BASELINE)] + [c for c in choices if str(c) != BASELINE]
    for i in range(len(out) - 1, 0, -1):
        counterpart = fp32_counterpart(str(out[i]))
        if counterpart is not None and counterpart not in {str(c) for c in out}:
            out.insert(i, parse_engine(counterpart))
    return out


def _open(model: Path, choice: EngineName, options: BenchOptions, meta: ArtefactMeta | None = None) -> Engine:
    """Open one engine for timing, or say why it cannot be timed here.

    Raises:
        RtkError: it needs a GPU this run does not use, it cannot open, or its runtime fell back
            to another provider (timing that under the name asked for would mislead).
    """
    if choice.needs_cuda and not options.device.startswith("cuda"):
        raise RtkError(f"{choice} needs a CUDA GPU; run with --device cuda on a machine that has one")
    request = EngineRequest.of(
        model, choice, device=options.device, threads=options.threads,
        # trt and ort-trt get the same profile for the batches timed (toolkit.core.trt.sidecar.profile_for).
        max_batch=max(options.batch_sizes) if "trt" in (choice.runtime, choice.provider) else None,
        checkpoint_options=options.checkpoint_options, meta=meta,
    )
    engine = open_engine(request)
    if engine.fell_back_from is not None:
        engine.close()
        raise RtkError(f"{choice} cannot run here (its runtime fell back to {engine.name}); {gpu_install_hint()}")
    return engine
