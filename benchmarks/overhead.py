"""Does rtk add overhead? Bare runtimes against rtk's engines and harness, on the same model.

    rtk export resnet50.pth                            # the fp32 ONNX next to the checkpoint
    python -m benchmarks.overhead resnet50.pth         # batch 1, CPU
    python -m benchmarks.overhead resnet50.pth --batch-size 8 --rounds 9 --out benchmarks/results

Four contenders run on the same random-weight model and the same input:

- ``torch (bare)``: the ``nn.Module`` in a plain loop under ``torch.inference_mode``;
- ``rtk eager``: :class:`engines.eager.EagerEngine`, timed by :func:`benchmarks.harness.time_calls`;
- ``onnxruntime (bare)``: an ``InferenceSession`` with default options in a plain loop;
- ``rtk ort``: :class:`engines.ort.OrtEngine`, timed by the harness.

The bare loops read the clock around each call and do nothing else; rtk's figures come from
the harness, so the comparison covers rtk's input checks, output conversion and the
harness's own bookkeeping. Each round runs every contender once, bare and rtk of a runtime
back to back, in an order that alternates between rounds; the ratio of per-round medians
rtk/bare is taken within each round and its median over rounds is reported, so drifts on a
shared machine cancel out. The ratio of the fastest calls is reported too: other processes
can only add time to a call, so the minimum is the steadiest figure on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from benchmarks.environment import collect_environment
from benchmarks.harness import time_calls
from engines.eager import EagerEngine
from engines.ort import OrtEngine
from toolkit.core.artefacts import onnx_path_for
from toolkit.core.checkpoint import load_checkpoint, load_model
from toolkit.core.errors import RtkError
from toolkit.core.outputs import write_atomic

if TYPE_CHECKING:
    import numpy as np

#: rtk's engines must be within this fraction of the bare runtime.
TOLERANCE = 0.03


def _bare_ms(fn: Callable[[], Any], iters: int) -> "np.ndarray":
    """Per-call milliseconds of a plain loop: the clock around each call, nothing else."""
    import numpy as np

    clock = time.perf_counter_ns
    out = np.empty(iters, dtype=np.int64)
    for i in range(iters):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out / 1e6


def _rtk_ms(engine: Any, x: Any, iters: int) -> "np.ndarray":
    return time_calls(engine, x, warmup_s=0.0, iters=iters) / 1e6


def measure_overhead(
    checkpoint: Path, onnx: Path, batch_size: int = 1, rounds: int = 7, iters: int = 10, threads: int | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Interleaved rounds of the four contenders; returns per-round medians (ms) and rtk/bare ratios.

    Args:
        checkpoint, onnx: the same model as a checkpoint and as an fp32 ONNX file.
        batch_size: images per call.
        rounds: interleaved rounds (odd, so the median is one round's value).
        iters: calls per contender per round.
        threads: intra-op threads for torch and ONNX Runtime (``None`` = their defaults).
        progress: receives one line per round.

    Returns:
        ``{"ms": {contender: [per-round medians]}, "ratio": {"eager": [...], "ort": [...]},
        "median_ratio": ..., "min_ratio": ..., ...}``.
    """
    import numpy as np
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    model, ckpt = load_model(checkpoint)
    shape = (batch_size, ckpt.spec.in_chans, *ckpt.preprocess.input_size)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    eager = EagerEngine(model, ckpt.spec, ckpt.preprocess)
    ort_engine = OrtEngine(onnx, threads=threads or 0)
    try:
        contenders = _contenders(model, onnx, eager, ort_engine, x, threads)
        ms, best = _interleaved(contenders, rounds, iters, progress)
    finally:
        eager.close()
        ort_engine.close()
    ratio = {k: [a / b for a, b in zip(ms[rtk], ms[bare])] for k, (bare, rtk) in PAIRS.items()}
    return {
        "model": {"checkpoint": checkpoint.name, "onnx": onnx.name, "arch": ckpt.spec.arch, "input_shape": list(x.shape[1:])},
        "batch_size": batch_size,
        "rounds": rounds,
        "iters": iters,
        "ms": ms,
        "ratio": ratio,
        "median_ms": {k: statistics.median(v) for k, v in ms.items()},
        "median_ratio": {k: statistics.median(v) for k, v in ratio.items()},
        "min_ms": best,
        "min_ratio": {k: best[rtk] / best[bare] for k, (bare, rtk) in PAIRS.items()},
        "ort_over_eager_bare": statistics.median(a / b for a, b in zip(ms["torch (bare)"], ms["onnxruntime (bare)"])),
        "ort_over_eager_rtk": statistics.median(a / b for a, b in zip(ms["rtk eager"], ms["rtk ort"])),
    }


#: Each runtime's bare contender and rtk's, compared within every round.
PAIRS = {"eager": ("torch (bare)", "rtk eager"), "ort": ("onnxruntime (bare)", "rtk ort")}


def _contenders(model: Any, onnx: Path, eager: EagerEngine, ort_engine: OrtEngine, x: "np.ndarray", threads: int | None) -> dict[str, Callable[[int], "np.ndarray"]]:
    """Per-call milliseconds of ``n`` calls of each contender on the same input ``x``."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    xt = torch.from_numpy(x)

    def bare_torch(n: int) -> "np.ndarray":
        with torch.inference_mode():
            return _bare_ms(lambda: model(xt), n)

    return {
        "torch (bare)": bare_torch,
        "rtk eager": lambda n: _rtk_ms(eager, x, n),
        "onnxruntime (bare)": lambda n: _bare_ms(lambda: session.run(None, feed), n),
        "rtk ort": lambda n: _rtk_ms(ort_engine, x, n),
    }


def _interleaved(contenders: dict[str, Callable[[int], "np.ndarray"]], rounds: int, iters: int, progress: Callable[[str], None]):
    """Per-round medians and the fastest call of every contender, over rounds whose order alternates."""
    import numpy as np

    for run in contenders.values():  # warm-up: first calls allocate and pick kernels
        run(2)
    ms: dict[str, list[float]] = {name: [] for name in contenders}
    best: dict[str, float] = {name: float("inf") for name in contenders}
    for r in range(rounds):
        runtimes = list(PAIRS.values()) if r % 2 == 0 else list(PAIRS.values())[::-1]
        for bare, rtk in runtimes:
            for name in (bare, rtk) if r % 2 == 0 else (rtk, bare):
                calls = contenders[name](iters)
                ms[name].append(float(np.median(calls)))
                best[name] = min(best[name], float(calls.min()))
        progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.2f} ms" for n, v in ms.items()))
    return ms, best


def fixed_cost_us(checkpoint: Path, batch_size: int = 1, iters: int = 2000) -> dict[str, float]:
    """rtk's own per-call cost, free of the model's noise: the eager engine's path (input checks,
    tensor wrapping, output conversion) and the harness around a module that does nothing.

    Returns:
        Median microseconds per call of the bare module and through rtk, and their difference.
    """
    import numpy as np
    import torch

    ckpt = load_checkpoint(checkpoint)
    x = np.zeros((batch_size, ckpt.spec.in_chans, *ckpt.preprocess.input_size), dtype=np.float32)
    xt = torch.from_numpy(x)
    nothing = torch.nn.Identity()
    engine = EagerEngine(nothing, ckpt.spec, ckpt.preprocess)
    with torch.inference_mode():
        bare = float(np.median(_bare_ms(lambda: nothing(xt), iters))) * 1e3
    rtk = float(np.median(_rtk_ms(engine, x, iters))) * 1e3
    return {"bare_us": bare, "rtk_us": rtk, "overhead_us": rtk - bare}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the model, e.g. a torchvision resnet50.pth")
    parser.add_argument("--onnx", type=Path, default=None, help="its fp32 ONNX; default MODEL.onnx next to it (rtk export MODEL.pth)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per call; default 1")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; default 7")
    parser.add_argument("--iters", type=int, default=10, help="calls per contender per round; default 10")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads; default: the runtimes' own")
    parser.add_argument("--out", type=Path, default=None, help="write overhead-ARCH-bBATCH.json into this folder")
    args = parser.parse_args(argv)

    onnx = args.onnx or onnx_path_for(args.checkpoint)
    try:
        if not onnx.is_file():
            raise RtkError(f"{onnx} does not exist; make it with `rtk export {args.checkpoint}` (or name one with --onnx)")
        result = measure_overhead(args.checkpoint, onnx, args.batch_size, args.rounds, args.iters, args.threads)
        result["fixed_cost_us"] = fixed_cost_us(args.checkpoint, args.batch_size)
    except RtkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import torch

    result["environment"] = collect_environment("cpu", args.threads or torch.get_num_threads())
    arch, shape = result["model"]["arch"], result["model"]["input_shape"]
    print(f"\n{arch} {shape[-1]}px, batch {args.batch_size}, {args.rounds} rounds x {args.iters} calls, "
          f"{result['environment']['cpu']['threads']} threads on {result['environment']['device_name']}")
    print(f"{'contender':<20} {'median ms/call':>15} {'fastest ms':>11}")
    for name, value in result["median_ms"].items():
        print(f"{name:<20} {value:>15.2f} {result['min_ms'][name]:>11.2f}")
    ok = True
    for runtime, ratio in result["median_ratio"].items():
        within = abs(ratio - 1) <= TOLERANCE
        ok &= within
        print(
            f"rtk {runtime} / bare: {ratio:.3f} median of per-round ratios ({'OK' if within else 'OUTSIDE'} ±{TOLERANCE:.0%}), "
            f"{result['min_ratio'][runtime]:.3f} fastest calls"
        )
    fixed = result["fixed_cost_us"]
    print(
        f"rtk's fixed cost per call (eager path + harness around a do-nothing module): {fixed['overhead_us']:.1f} µs "
        f"= {fixed['overhead_us'] / 1e3 / result['median_ms']['torch (bare)']:.4%} of one {arch} call"
    )
    print(f"ort speed-up over eager: bare {result['ort_over_eager_bare']:.2f}x, rtk {result['ort_over_eager_rtk']:.2f}x")
    if args.out is not None:
        path = write_atomic(args.out / f"overhead-{arch}-b{args.batch_size}.json", json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
