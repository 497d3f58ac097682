"""The timing harness behind ``rtk bench``: warm-up, synchronised clocks, percentiles, sweeps.

What is timed is the engine call and nothing else: inputs are allocated before the timed
loop, ``perf_counter_ns`` is read right around the call (after a device synchronisation, so
queued GPU work is never attributed to the wrong iteration), samples go into a preallocated
array. ``python -m benchmarks.overhead`` checks the result against bare runtime loops.

On CUDA the harness also splits one host-to-host inference into its H2D copy, compute and
D2H copy with CUDA events (as trtexec does), records peak device memory, and can replay eager
models as CUDA graphs (``eager-graph``).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from benchmarks.environment import collect_environment
from engines.base import Engine
from engines.names import parse_engine, parse_engines
from toolkit.core.checkpoint import CheckpointOptions
from toolkit.core.defaults import DEFAULT_BATCH_SIZES
from toolkit.core.errors import RtkError, first_line
from toolkit.core.precision import RUN_TIME_PRECISIONS, check_precision
from toolkit.core.validation import COUNT, NON_NEGATIVE, POSITIVE, UsageError

IO_MODES = ("host", "device", "both")
#: The I/O mode when none is given: on a GPU both host-to-host and device-resident figures.
DEFAULT_IO = {"cpu": "host", "cuda": "both"}
#: The engine every speed-up is relative to.
BASELINE = "eager"
#: Fewest timed iterations behind a figure when a time budget is used.
MIN_ITERS = 5
#: Iterations of the CUDA-event H2D / compute / D2H split.
SPLIT_ITERS = 50


@dataclass(frozen=True)
class BenchOptions:
    """What to run and for how long.

    The harness times engines that are already open (:func:`run_benchmark`); ``engines``,
    ``precision``, ``baseline`` and ``checkpoint_options`` say which ones to open, for whoever opens
    them (``rtk bench``: :func:`toolkit.usecases.bench.benchmark_model`), and are recorded with the run.

    Attributes:
        engines: engine names (:mod:`engines.names`, e.g. ``eager-fp16-cl-graph``, ``ort-cuda``; ``all``
            for one of every kind); none: the model's own runtime (eager, ort or trt).
        batch_sizes: batch sizes to sweep, in order (default: :data:`DEFAULT_BATCH_SIZES` of the device).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        precision: applies to the engines named without one; ``None`` = each engine's own
            default (fp16 for TensorRT, fp32 otherwise).
        warmup_s: untimed warm-up per engine and batch size (at least one call).
        duration_s: time budget per engine and batch size (ignored when ``iters`` is set).
        iters: exact number of timed iterations instead of a time budget (in total, split
            over the rounds; at least one per round).
        threads: intra-op threads for torch, ONNX Runtime and OpenVINO (``None`` = their defaults).
        io: ``"host"`` (numpy in, numpy out), ``"device"`` (inputs and outputs stay on the
            engine's device) or ``"both"`` (default: :data:`DEFAULT_IO` of the device).
        rounds: repeat the sweep this many times, engines interleaved, and pool the samples;
            spreads slow drifts on a shared machine over every engine alike.
        baseline: add eager fp32 to the run (when the model is a checkpoint) so every engine
            gets a speed-up figure, and the fp32 engine of each reduced precision's own runtime
            (``ort`` for ``ort-int8``, ``ov`` for ``ov-bf16``, ``trt-fp32`` for ``trt``), so that
            each also gets its ratio to fp32 on the same runtime.
        checkpoint_options: which of a checkpoint's weights to run (EMA or raw), and whether to
            trust a pickle.
    """

    engines: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] | None = None
    device: str = "cpu"
    precision: str | None = None
    warmup_s: float = 1.0
    duration_s: float = 3.0
    iters: int | None = None
    threads: int | None = None
    io: str | None = None
    rounds: int = 1
    baseline: bool = True
    checkpoint_options: CheckpointOptions = field(default_factory=CheckpointOptions)

    def __post_init__(self) -> None:
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise UsageError(f"device must be cpu or cuda[:N], got {self.device!r}")
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        if self.batch_sizes is None:
            object.__setattr__(self, "batch_sizes", DEFAULT_BATCH_SIZES[kind])
        if self.io is None:
            object.__setattr__(self, "io", DEFAULT_IO[kind])
        if not self.batch_sizes:
            raise UsageError("the benchmark needs at least one batch size")
        for size in self.batch_sizes:
            COUNT.check(size, "--batch-size")
        if self.precision is not None:
            check_precision(self.precision, RUN_TIME_PRECISIONS, "--precision")
        if self.io not in IO_MODES:
            raise UsageError(f"io must be one of {', '.join(IO_MODES)}, got {self.io!r}")
        for flag, value, rule in (
            ("--warmup", self.warmup_s, NON_NEGATIVE), ("--duration", self.duration_s, POSITIVE), ("--iters", self.iters, COUNT),
            ("--threads", self.threads, COUNT), ("--rounds", self.rounds, COUNT),
        ):
            rule.check(value, flag)
        if self.iters is not None and self.iters < self.rounds:
            raise UsageError(f"--iters {self.iters} is fewer than --rounds {self.rounds}: every round times at least one call")
        if self.engines:
            parse_engines(self.engines, self.precision)

    @property
    def io_modes(self) -> tuple[str, ...]:
        return ("host", "device") if self.io == "both" else (self.io,)


# --------------------------------------------------------------------------- results


@dataclass
class BenchResult:
    """One engine at one batch size and I/O mode (or one row saying why an engine did not run).

    Latencies are in milliseconds; ``throughput_ips`` is images per second. ``status`` is
    ``ok``, ``skipped`` (with ``reason``) or ``oom``.
    """

    engine: str
    precision: str
    device: str
    status: str
    batch_size: int | None = None
    io: str | None = None
    reason: str | None = None
    threads: int | None = None
    iterations: int = 0
    timed_s: float = 0.0
    throughput_ips: float | None = None
    latency_ms: dict[str, float] | None = None
    split_ms: dict[str, float] | None = None
    peak_memory_mb: float | None = None
    device_memory_used_mb: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_fp32: float | None = None
    fp32_engine: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BenchReport:
    """A whole run: the model, the settings, the environment and one row per measurement."""

    model: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]
    results: list[BenchResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "rtk.bench",
            "version": 1,
            "model": self.model,
            "settings": self.settings,
            "environment": self.environment,
            "results": [r.to_dict() for r in self.results],
        }


def latency_stats(samples_ns: np.ndarray) -> dict[str, float]:
    """Mean, std, min, p50, p90, p99 and max of latency samples, in milliseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "mean": float(ms.mean()),
        "std": float(ms.std()),
        "min": float(ms.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(ms.max()),
    }


# --------------------------------------------------------------------------- timing


def time_calls(
    fn: Callable[[Any], Any],
    arg: Any,
    sync: Callable[[], None] | None = None,
    *,
    warmup_s: float = 1.0,
    duration_s: float = 3.0,
    iters: int | None = None,
    min_iters: int = MIN_ITERS,
) -> np.ndarray:
    """Latency samples (ns) of ``fn(arg)``, each bracketed by ``sync`` and the clock.

    The clock is read right before and after the call, after ``sync`` (a device
    synchronisation) on both sides, so that only this call's work is counted. The sample
    buffer is sized from the warm-up and grown only between timed calls.

    Args:
        fn, arg: the call to time (an engine and its preallocated input).
        sync: waits for queued device work; ``None`` on CPU.
        warmup_s: untimed warm-up; at least one call is always made (first calls compile,
            allocate and autotune).
        duration_s: time budget, ignored when ``iters`` is given.
        iters: exact number of timed calls.
        min_iters: fewest timed calls under a time budget.

    Returns:
        int64 nanoseconds, one per timed call.
    """
    clock = time.perf_counter_ns
    per_call = _warm_up(fn, arg, sync, warmup_s)
    capacity = iters if iters is not None else max(min_iters, int(duration_s * 1e9 / per_call * 1.25) + 16)
    samples = np.empty(capacity, dtype=np.int64)
    end = clock() + int(duration_s * 1e9)
    count = 0
    while True:
        if count == len(samples):
            samples = np.concatenate([samples, np.empty_like(samples)])
        if sync is not None:
            sync()
        t0 = clock()
        fn(arg)
        if sync is not None:
            sync()
        t1 = clock()
        samples[count] = t1 - t0
        count += 1
        if iters is not None:
            if count >= iters:
                break
        elif t1 >= end and count >= min_iters:
            break
    return samples[:count]


def _warm_up(fn: Callable[[Any], Any], arg: Any, sync: Callable[[], None] | None, warmup_s: float) -> float:
    """Untimed calls for ``warmup_s`` (at least one); returns the mean nanoseconds per call they took."""
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(warmup_s * 1e9)
    calls = 0
    while calls == 0 or clock() < deadline:
        fn(arg)
        if sync is not None:
            sync()
        calls += 1
    return max((clock() - start) / calls, 1.0)


# --------------------------------------------------------------------------- one measurement


class _CudaGraph:
    """An eager engine captured as a CUDA graph over static input/output buffers."""

    def __init__(self, engine: Any, static_input: Any):
        import torch

        self.input = static_input
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch requires
            for _ in range(3):
                engine.run_device(static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = engine.run_device(static_input)

    def run_device(self, _batch: Any) -> Any:
        self.graph.replay()
        return self.output

    def __call__(self, batch: np.ndarray, *, finite: bool = False) -> np.ndarray:
        import torch

        self.input.copy_(torch.from_numpy(batch))
        self.graph.replay()
        return self.output.float().cpu().numpy()


class _Measurement:
    """Buffers and callables for one engine at one batch size, built before any timing."""

    def __init__(self, engine: Engine, batch_size: int, device: str):
        rng = np.random.default_rng(batch_size)
        self.host = rng.standard_normal((batch_size, *engine.input_shape), dtype=np.float32)
        self.engine = engine
        self.cuda = device.startswith("cuda")
        self.device_input = None
        self.graph = None
        import torch

        cuda_graph = parse_engine(engine.name).cuda_graph
        # On CPU the host is the device: a torch tensor there is what a device-resident caller holds.
        self.device_input = torch.from_numpy(self.host).to(device) if self.cuda or cuda_graph else torch.from_numpy(self.host)
        if cuda_graph:
            self.graph = _CudaGraph(engine, self.device_input)

    def call(self, io: str) -> tuple[Callable[[Any], Any], Any]:
        runner = self.graph or self.engine
        if io == "host":
            # finite=False: the benchmark times calls whose logits nobody reads.
            return functools.partial(runner.__call__, finite=False), self.host
        if self.cuda and not (self.graph or self.engine.device_resident):
            raise RtkError(f"the {self.engine.name} engine has no device-resident path; use --io host")
        return runner.run_device, self.device_input


def _sync_for(engine: Any, cuda: bool) -> Callable[[], None] | None:
    if not cuda:
        return None
    import torch

    def sync() -> None:
        engine.synchronize()
        torch.cuda.synchronize(engine.device)  # the engine's GPU, which need not be the current one

    return sync


def _split_ms(m: _Measurement, iters: int) -> dict[str, float]:
    """Median H2D copy, compute and D2H copy of a host-to-host inference, from CUDA events.

    The events and copies go on the engine's GPU's current stream. An engine whose device path
    is ordered on that stream (TensorRT, eager) is timed by the events alone; only one that
    blocks the host on its own stream (ONNX Runtime's IO binding) needs a host sync, which then
    counts in "compute".
    """
    import torch

    runner = m.graph or m.engine
    device = m.device_input.device
    with torch.cuda.device(device):
        pinned_in = torch.from_numpy(m.host).pin_memory()
        out = runner.run_device(m.device_input)
        pinned_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        events = [[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(iters)]
        stream_ordered = m.graph is not None or m.engine.stream_ordered
        torch.cuda.synchronize(device)
        for e in events:
            e[0].record()
            m.device_input.copy_(pinned_in, non_blocking=True)
            e[1].record()
            out = runner.run_device(m.device_input)
            if not stream_ordered:
                m.engine.synchronize()
            e[2].record()
            pinned_out.copy_(out, non_blocking=True)
            e[3].record()
        torch.cuda.synchronize(device)
    times = np.array([[e[i].elapsed_time(e[i + 1]) for i in range(3)] for e in events])
    h2d, compute, d2h = np.median(times, axis=0)
    return {"h2d": float(h2d), "compute": float(compute), "d2h": float(d2h)}


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "failed to allocate" in text


def _is_compile_failure(exc: BaseException) -> bool:
    # torch.compile failing for lack of a compiler/toolchain is the machine's limit, not a bug here.
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _free_device_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the sweep


def measure(
    engine: Engine, batch_size: int, io: str, options: BenchOptions, duration_s: float | None = None, iters: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Time one engine at one batch size; returns latency samples (ns) and CUDA extras.

    Raises:
        RtkError: the engine cannot take this batch size or I/O mode.
    """
    # The engine's own device: an ORT CPU session in a --device cuda run is still a host engine.
    device = str(engine.device)
    cuda = device.startswith("cuda")
    extras: dict[str, Any] = {}
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    m = _Measurement(engine, batch_size, device)
    fn, arg = m.call(io)
    samples = time_calls(
        fn, arg, _sync_for(engine, cuda),
        warmup_s=options.warmup_s,
        duration_s=duration_s if duration_s is not None else options.duration_s,
        iters=iters if iters is not None else options.iters,
    )
    if cuda:
        import torch

        if io == "host" and m.device_input is not None and (m.graph or engine.device_resident):
            extras["split_ms"] = _split_ms(m, min(SPLIT_ITERS, max(len(samples), 10)))
        # torch's allocator misses what a runtime allocates itself (TensorRT's plan and context).
        extras["peak_memory_mb"] = (torch.cuda.max_memory_allocated(device) + engine.device_memory_bytes) / 2**20
        free, total = torch.cuda.mem_get_info(device)
        extras["device_memory_used_mb"] = (total - free) / 2**20
    return samples, extras


def run_benchmark(
    engines: Sequence[Engine],
    options: BenchOptions,
    progress: Callable[[BenchResult], None] | None = None,
    *,
    skipped: Sequence[BenchResult] = (),
    model: Mapping[str, Any] | None = None,
    asked: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> BenchReport:
    """Time engines that are already open, across the batch sizes and I/O modes of ``options``.

    A batch size that runs out of memory gives an ``oom`` row and the sweep goes on; a batch or
    I/O mode an engine cannot take gives a ``skipped`` row. The engines stay open: whoever opened
    them closes them.

    Args:
        engines: the engines to time, in the order each round measures them.
        options: how long, at which batch sizes and I/O modes, on how many threads.
        progress: called with each finished row (for live output).
        skipped: rows for engines that could not be opened, reported first, as given.
        model: what the report says of the model (``path``, ``name``, ``kind``); architecture,
            classes and input shape are read from the first engine.
        asked: the engine names the run was asked for (the report's settings); by default the
            skipped and the timed ones.
        labels: what each engine's rows are called, where one engine runs several files (a
            comparison of files, not of engines); by default the engine's own name.

    Returns:
        The report: model, settings, environment and results (speed-ups filled in).

    Raises:
        RtkError: a CUDA device asked for on a machine without one.
    """
    import torch  # the harness imports torch on first use: `rtk --help` must not pay for it

    require_device(options.device)
    emit = progress or (lambda r: None)
    saved_threads = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        results = [*skipped, *_sweep(list(engines), options, emit, labels)]
    finally:
        torch.set_num_threads(saved_threads)
    _fill_speedups(results)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}
    names = list(labels) if labels is not None else [e.name for e in engines]
    settings["engines"] = list(asked) if asked is not None else [r.engine for r in skipped] + names
    info = _model_info(model or {}, engines)
    return BenchReport(info, settings, collect_environment(options.device, torch_threads(options)), results)


def require_device(device: str) -> None:
    """Refuse a CUDA device on a machine without one, before any engine is opened or timed.

    Raises:
        RtkError: naming the device and the way out (``--device cpu``).
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RtkError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu")


def torch_threads(options: BenchOptions) -> int:
    """The intra-op thread count the run used (``--threads`` or torch's default)."""
    import torch

    return options.threads if options.threads is not None else torch.get_num_threads()


def _sweep(engines: list[Engine], options: BenchOptions, emit, labels: Sequence[str] | None = None) -> list[BenchResult]:
    """Rounds × batch sizes × engines × I/O modes; samples of a cell pooled over rounds."""
    cuda = options.device.startswith("cuda")
    per_round_s = options.duration_s / options.rounds
    pooled: dict[tuple[int, int, str], list[np.ndarray]] = {}
    extras: dict[tuple[int, int, str], dict[str, Any]] = {}
    failed: dict[tuple[int, int, str], BenchResult] = {}
    rows: list[BenchResult] = []
    threads = torch_threads(options)
    for round_index in range(options.rounds):
        last = round_index == options.rounds - 1
        round_iters = _round_iters(options, round_index)
        for batch_size in options.batch_sizes:
            for e, engine in enumerate(engines):
                for io in options.io_modes:
                    key = (e, batch_size, io)
                    if key in failed:
                        continue
                    label = labels[e] if labels is not None else engine.name
                    base = BenchResult(label, engine.precision, options.device, "ok", batch_size, io, threads=threads)
                    try:
                        samples, extra = measure(engine, batch_size, io, options, per_round_s, round_iters)
                    except RtkError as exc:
                        failed[key] = dataclasses.replace(base, status="skipped", reason=str(exc))
                    except Exception as exc:  # noqa: BLE001 - only OOM and compiler failures are handled
                        if _is_oom(exc):
                            failed[key] = dataclasses.replace(base, status="oom", reason=first_line(exc))
                        elif _is_compile_failure(exc):
                            failed[key] = dataclasses.replace(base, status="skipped", reason=f"torch.compile failed: {first_line(exc)}")
                        else:
                            raise
                        _free_device_memory(cuda)
                    else:
                        pooled.setdefault(key, []).append(samples)
                        extras.setdefault(key, {}).update(extra)
                    if key in failed:
                        rows.append(failed[key])
                        emit(failed[key])
                        pooled.pop(key, None)
                    elif last:
                        row = _finish(base, np.concatenate(pooled[key]), extras[key])
                        rows.append(row)
                        emit(row)
    return rows


def _round_iters(options: BenchOptions, round_index: int) -> int | None:
    """Timed calls in one round: ``iters`` split exactly, the remainder going to the first rounds,
    so the pooled count is the ``iters`` the report's settings record."""
    if options.iters is None:
        return None
    share, extra = divmod(options.iters, options.rounds)
    return share + (round_index < extra)


def _finish(row: BenchResult, samples: np.ndarray, extra: dict[str, Any]) -> BenchResult:
    stats = latency_stats(samples)
    return dataclasses.replace(
        row,
        iterations=int(len(samples)),
        timed_s=float(samples.sum() / 1e9),
        throughput_ips=float(row.batch_size * len(samples) / (samples.sum() / 1e9)),
        latency_ms=stats,
        split_ms=extra.get("split_ms"),
        peak_memory_mb=extra.get("peak_memory_mb"),
        device_memory_used_mb=extra.get("device_memory_used_mb"),
    )


def fp32_counterpart(engine: str) -> str | None:
    """The fp32 engine of a reduced-precision engine's own runtime: ``ort`` for ``ort-int8``,
    ``eager-cl`` for ``eager-fp16-cl``, ``trt-fp32`` for ``trt``; ``None`` for an fp32 engine or a
    row name outside the grammar."""
    try:
        name = parse_engine(engine)
    except RtkError:
        return None
    if name.resolved_precision == "fp32":
        return None
    return str(dataclasses.replace(name, precision="fp32"))


def _fill_speedups(results: list[BenchResult]) -> None:
    """Each ok row's throughput over eager fp32's, and over its own runtime's fp32 engine's, at the
    same batch size and I/O mode."""
    ok = {(r.engine, r.batch_size, r.io): r.throughput_ips for r in results if r.status == "ok"}
    for r in results:
        if r.status != "ok":
            continue
        ref = ok.get((BASELINE, r.batch_size, r.io))
        if ref:
            r.speedup_vs_eager = r.throughput_ips / ref
        counterpart = fp32_counterpart(r.engine)
        fp32 = ok.get((counterpart, r.batch_size, r.io)) if counterpart else None
        if fp32:
            r.speedup_vs_fp32, r.fp32_engine = r.throughput_ips / fp32, counterpart


def _model_info(model: Mapping[str, Any], engines: Sequence[Engine]) -> dict[str, Any]:
    info: dict[str, Any] = {"path": model.get("path"), "name": model.get("name"), "kind": model.get("kind")}
    if engines:
        engine = engines[0]
        info.update(arch=engine.spec.name, num_classes=engine.spec.num_classes, input_shape=list(engine.input_shape))
    else:
        info.update(arch=None, num_classes=None, input_shape=None)
    return info
