"""CPU time per call of ONNX files on ONNX Runtime's CPU provider: a speed comparison that other jobs cannot skew.

    python -m benchmarks.cpu_time resnet50.onnx resnet50.int8.onnx u8/resnet50.int8.onnx -b 1,8

Wall-clock figures on a shared machine measure the other jobs as much as the model. The CPU
time a single-threaded session spends in one call (``time.process_time`` around ``run``) does not
grow when other processes compete for the cores, so on a busy machine it is the honest way to
compare two precisions of one model. Every file gets one intra-op thread, the calls are
interleaved file by file, and the median per file and batch size is printed with its ratio to
the first file. It is not a throughput figure: with more threads, the wall-clock benchmark
(``rtk bench``) on an idle machine is the one to quote.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def cpu_ms_per_call(paths: list[str], batch_size: int, calls: int, seed: int = 0) -> dict[str, float]:
    """Median CPU milliseconds per ``run`` of each ONNX file (one thread each), calls interleaved."""
    import onnxruntime as ort

    sessions = {}
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        sessions[path] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    first = next(iter(sessions.values())).get_inputs()[0]
    shape = [batch_size, *(d if isinstance(d, int) else 1 for d in first.shape[1:])]
    feed = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    samples: dict[str, list[float]] = {path: [] for path in paths}
    for session in sessions.values():  # warm-up: the first call allocates and picks kernels
        session.run(None, {session.get_inputs()[0].name: feed})
    for _ in range(calls):
        for path, session in sessions.items():
            started = time.process_time()
            session.run(None, {session.get_inputs()[0].name: feed})
            samples[path].append((time.process_time() - started) * 1000)
    return {path: statistics.median(values) for path, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("onnx", nargs="+", help="ONNX files; ratios are to the first")
    parser.add_argument("-b", "--batch-size", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per file and batch size")
    args = parser.parse_args(argv)
    try:
        sizes = [int(b) for b in args.batch_size.split(",")]
    except ValueError:
        parser.error(f"--batch-size takes comma-separated integers, got {args.batch_size!r}")
    if any(b < 1 for b in sizes) or args.calls < 1:
        parser.error("batch sizes and --calls must be at least 1")
    for size in sizes:
        medians = cpu_ms_per_call(args.onnx, size, args.calls)
        base = medians[args.onnx[0]]
        for path, ms in medians.items():
            print(f"batch {size:>3}  {path:<40} {ms:9.1f} CPU ms per call  {base / ms:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
