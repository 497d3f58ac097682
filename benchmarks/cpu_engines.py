"""Every CPU engine on one model in one interleaved run: eager, ort, ov, ov-bf16, ov-int8, and
ONNX Runtime on the same int8 (QDQ) file.

``rtk bench`` runs one artefact's engines; here ONNX Runtime also runs ``MODEL.int8.onnx`` next
to the checkpoint (the file ``ov-int8`` runs), and ``ov-int8`` runs a second time with OpenVINO's
LATENCY hint at every batch size beside its default (``auto``: LATENCY for small batches,
THROUGHPUT streams for large ones), so one run answers which CPU engine to pick. Rows, timing and files are ``rtk bench``'s own
(:mod:`benchmarks.harness`, :mod:`benchmarks.report`).

    python -m benchmarks.cpu_engines MODEL.pth -b 1,8 --threads 2 --rounds 4 --duration 12 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

#: The engines opened by name on the checkpoint, in the order they are measured in each round.
ENGINES = ("eager", "ort", "ov", "ov-bf16", "ov-int8")


def _open_all(checkpoint: Path, options: Any) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """The engines that open here, and one skipped row for each that does not."""
    from benchmarks.harness import BenchResult, open_engine
    from engines.names import parse_engine
    from engines.openvino import OvEngine
    from engines.ort import OrtEngine
    from toolkit.core.artefacts import onnx_path_for
    from toolkit.core.errors import RtkError

    loaded, skipped = [], []
    for text in ENGINES:
        choice = parse_engine(text)
        try:
            loaded.append((choice, open_engine(checkpoint, choice, options)))
        except RtkError as exc:
            skipped.append(BenchResult(text, choice.resolved_precision, "cpu", "skipped", reason=str(exc)))
    int8 = onnx_path_for(checkpoint, "int8")
    if int8.exists():
        threads = options.threads or 0
        ort = OrtEngine(int8, threads=threads)
        # The same file as ov-int8: ONNX Runtime runs its QDQ pairs with int8 kernels too.
        ort.name, ort.precision = "ort(int8 file)", "int8"
        loaded.append((parse_engine("ort"), ort))
        latency = OvEngine(int8, precision="int8", threads=threads, performance_hint="latency")
        latency.name = "ov-int8(latency hint)"  # what the default auto hint does below its throughput batch
        loaded.append((parse_engine("ov-int8"), latency))
    return loaded, skipped


def run(checkpoint: Path, options: Any) -> dict[str, Any]:
    """One interleaved sweep of every CPU engine; the report ``rtk bench`` would write."""
    import torch

    from benchmarks.environment import collect_environment
    from benchmarks.harness import BenchReport, _fill_speedups, _model_info, _sweep
    from benchmarks.report import progress_line
    from toolkit.core.console import info

    saved = torch.get_num_threads()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    try:
        loaded, results = _open_all(checkpoint, options)
        try:
            results += _sweep(loaded, options, lambda row: info(progress_line(row)))
        finally:
            for _, engine in loaded:
                engine.close()
    finally:
        torch.set_num_threads(saved)
    _fill_speedups(results)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}
    settings["engines"] = [engine.name for _, engine in loaded]
    environment = collect_environment("cpu", options.threads or torch.get_num_threads())
    return BenchReport(_model_info(checkpoint, "checkpoint", loaded), settings, environment, results).to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the model; MODEL.int8.onnx next to it adds the int8 rows")
    parser.add_argument("-b", "--batch-sizes", default="1,8", help="comma-separated batch sizes; default 1,8")
    parser.add_argument("--threads", type=int, default=None, help="threads for every runtime; default: their own")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds, samples pooled; default 4")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds per engine and batch size; default 1")
    parser.add_argument("--duration", type=float, default=12.0, help="timed seconds per engine and batch size; default 12")
    parser.add_argument("--out", type=Path, default=None, help="write NAME.json, NAME.csv and NAME.png into this folder")
    parser.add_argument("--name", default=None, help="file stem for --out")
    args = parser.parse_args(argv)

    from benchmarks.harness import BenchOptions
    from benchmarks.report import check_out_dir, render_table, write_report
    from toolkit.core.artefacts import artefact_kind
    from toolkit.core.errors import RtkError

    try:
        if artefact_kind(args.checkpoint) != "checkpoint":
            raise RtkError(f"{args.checkpoint} is not a checkpoint; eager needs one")
        if args.out is not None:
            check_out_dir(args.out)
        try:
            batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        except ValueError:
            raise RtkError(f"--batch-sizes takes comma-separated positive integers, got {args.batch_sizes!r}") from None
        options = BenchOptions(
            engines=("eager",), batch_sizes=batch_sizes, threads=args.threads,
            warmup_s=args.warmup, duration_s=args.duration, rounds=args.rounds, baseline=False,
        )
        report = run(args.checkpoint, options)
    except RtkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from rich.console import Console

    Console(width=160).print(render_table(report))
    if args.out is not None:
        for path in write_report(report, args.out, args.name):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
