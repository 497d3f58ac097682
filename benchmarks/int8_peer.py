"""rtk's int8 files against ONNX Runtime's own static quantization, in one interleaved run.

The peer is what ONNX Runtime documents for x86 CPUs: ``quant_pre_process`` then
``quantize_static`` in QDQ format with uint8 activations and int8 weights (U8S8), per-tensor
weights (its guide's choice for throughput), calibrated with minmax on the very images rtk
calibrated on. Both runtimes run both: ONNX Runtime (``ort``, ``ort-int8``, the peer file, and
rtk's symmetric file, the one ``ort-int8`` ran before it picked the uint8 layout) and OpenVINO
(``ov``, ``ov-int8``, the peer file, and rtk's symmetric file, the one ``ov-int8`` ran before). Rows and timing are ``rtk bench``'s own
(:func:`benchmarks.harness.run_benchmark`, each engine class on its file, the rows other than the
engines' own labelled by file); the ratios come from one run, so they hold on any CPU.

Then every int8 file's top-1 agreement with the fp32 ONNX on real images held out of the
calibration (and accuracy, when labelled).

    rtk export resnet50.pth --precision int8 --calib digits          # MODEL.int8.onnx, MODEL.int8.u8.onnx
    python -m benchmarks.int8_peer resnet50.pth -b 8 --threads 2 --rounds 4 --duration 20 --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import BenchOptions, run_benchmark
from benchmarks.report import check_out_dir, progress_line, render_table, report_name, write_report
from engines.base import Engine
from engines.openvino import OvEngine
from engines.ort import OrtEngine
from toolkit.core.artefacts import onnx_path_for, u8_path_for
from toolkit.core.compare import chunks, compare
from toolkit.core.console import info, results_console
from toolkit.core.errors import RtkError
from toolkit.core.image_sets import calibration_draw, calibration_pool, prepare_images
from toolkit.core.onnx_graph import load_onnx_graph, metadata_dict, read_onnx_meta
from toolkit.core.outputs import write_atomic

#: Labels of the rows that are not engine names (the same runtime on another file).
PEER_ORT, PEER_OV = "ort(peer U8S8 file)", "ov(peer U8S8 file)"
SYMMETRIC_ORT, SYMMETRIC_OV = "ort(symmetric int8 file)", "ov(symmetric int8 file)"


class _Batches:
    """The calibration images, eight at a time, as onnxruntime's calibration reads them."""

    def __init__(self, images: np.ndarray):
        self.batches = iter([images[i : i + 8] for i in range(0, len(images), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


def _files(checkpoint: Path) -> dict[str, Path]:
    """rtk's files beside the checkpoint: fp32, the symmetric int8 and its uint8 layout.

    Raises:
        RtkError: one is missing, with the export that makes it.
    """
    int8 = onnx_path_for(checkpoint, "int8")
    files = {"fp32": onnx_path_for(checkpoint), "int8": int8, "u8": u8_path_for(int8)}
    missing = [p.name for p in files.values() if not p.exists()]
    if missing:
        raise RtkError(
            f"{', '.join(missing)} missing beside {checkpoint.name}; make them with `rtk export {checkpoint}` and "
            f"`rtk export {checkpoint} --precision int8 --calib DATA`"
        )
    return files


def _calibration(int8: Path) -> dict[str, Any]:
    return metadata_dict(load_onnx_graph(int8))["calibration"]


def make_peer(checkpoint: Path, out: Path) -> Path:
    """ONNX Runtime's documented U8S8 QDQ file of ``checkpoint``'s fp32 ONNX, calibrated on the
    very images rtk's int8 export of it calibrated on (its record says which)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    files = _files(checkpoint)
    record = _calibration(files["int8"])
    meta = read_onnx_meta(files["fp32"])
    pool, _ = calibration_pool(record["data"], meta.preprocess.input_size[0], record.get("asked") or record["samples"], record["seed"])
    drawn = calibration_draw(pool, record.get("asked") or record["samples"], record["seed"])
    images = prepare_images(drawn, meta.spec, meta.preprocess).images
    with tempfile.TemporaryDirectory(prefix="rtk-peer-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(files["fp32"]), str(prepared))
        quantize_static(
            str(prepared), str(out), _Batches(images),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
    return out


def _open_all(checkpoint: Path, peer: Path, threads: int) -> list[tuple[str, Engine]]:
    """Each runtime on each file, labelled: the engines' own names for rtk's files, the file otherwise."""
    files = _files(checkpoint)
    meta = read_onnx_meta(files["fp32"])
    opened: list[tuple[str, Engine]] = []
    try:
        for label, make in (
            ("ort", lambda: OrtEngine(files["fp32"], threads=threads)),
            ("ort-int8", lambda: OrtEngine(files["u8"], threads=threads)),
            (PEER_ORT, lambda: OrtEngine(peer, meta=meta, threads=threads)),
            (SYMMETRIC_ORT, lambda: OrtEngine(files["int8"], threads=threads)),
            ("ov", lambda: OvEngine(files["fp32"], threads=threads)),
            ("ov-int8", lambda: OvEngine(files["u8"], threads=threads)),
            (PEER_OV, lambda: OvEngine(peer, meta=meta, threads=threads)),
            (SYMMETRIC_OV, lambda: OvEngine(files["int8"], threads=threads)),
        ):
            opened.append((label, make()))
    except BaseException:
        for _, engine in opened:
            engine.close()
        raise
    return opened


def agreement(checkpoint: Path, opened: list[tuple[str, Engine]], max_samples: int) -> dict[str, Any]:
    """Top-1 agreement (and accuracy, when labelled) of every int8 row with the fp32 ONNX, on the
    images the export check judged on (held out of calibration)."""
    files = _files(checkpoint)
    record = _calibration(files["int8"])
    meta = read_onnx_meta(files["fp32"])
    _, held = calibration_pool(record["data"], meta.preprocess.input_size[0], record.get("asked") or record["samples"], record["seed"])
    images = prepare_images(held, meta.spec, meta.preprocess, max_samples)
    batches = chunks(images.images, 16)
    engines = dict(opened)
    reference = engines["ort"].run_batches(batches)
    out: dict[str, Any] = {"images": images.source}
    for label, engine in opened:
        if engine.precision != "int8":
            continue
        m = compare(reference, engine.run_batches(batches), "int8", labels=images.labels)
        out[label] = {"top1_agreement": m.top1_agreement, "min_cosine": m.min_cosine, "accuracy": m.accuracy, "fp32_accuracy": m.reference_accuracy}
    return out


def run(checkpoint: Path, options: BenchOptions, max_samples: int = 256, peer: Path | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The peer file (made when missing), one interleaved sweep, and the agreement table
    (``None`` when ``max_samples`` is 0)."""
    peer = peer or onnx_path_for(checkpoint, "int8").with_name(checkpoint.stem + ".int8.peer-u8s8.onnx")
    if not peer.exists():
        info(f"making {peer.name}: onnxruntime quantize_static, QDQ U8S8, calibrated on rtk's calibration images")
        make_peer(checkpoint, peer)
    opened = _open_all(checkpoint, peer, options.threads or 0)
    try:
        labels = [label for label, _ in opened]
        about = {"path": str(checkpoint), "name": checkpoint.name, "kind": "checkpoint"}
        report = run_benchmark(
            [engine for _, engine in opened], options, lambda row: info(progress_line(row)), model=about, labels=labels,
        )  # fmt: skip
        agreed = agreement(checkpoint, opened, max_samples) if max_samples else None
    finally:
        for _, engine in opened:
            engine.close()
    return report.to_dict(), agreed


def ratios(report: dict[str, Any]) -> list[tuple[int, str, float, float, float | None]]:
    """Per batch size and row: images/s, × ort fp32, and × the same runtime's peer file where it has one."""
    ok = {(r["engine"], r["batch_size"]): r["throughput_ips"] for r in report["results"] if r["status"] == "ok"}
    peers = {"ort-int8": PEER_ORT, "ov-int8": PEER_OV, SYMMETRIC_ORT: PEER_ORT, SYMMETRIC_OV: PEER_OV}
    rows = []
    for (engine, batch), ips in ok.items():
        peer = ok.get((peers.get(engine), batch))
        rows.append((batch, engine, ips, ips / ok[("ort", batch)], ips / peer if peer else None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the model; its int8 files (rtk export --precision int8 --calib DATA) beside it")
    parser.add_argument("-b", "--batch-sizes", default="8", help="comma-separated batch sizes; default 8")
    parser.add_argument("--threads", type=int, default=None, help="threads for every runtime; default: their own")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds, samples pooled; default 4")
    parser.add_argument("--warmup", type=float, default=1.0, help="untimed seconds per engine, batch size and round; default 1")
    parser.add_argument("--duration", type=float, default=20.0, help="timed seconds per engine and batch size; default 20")
    parser.add_argument("--max-samples", type=int, default=256, help="held-out images for the agreement table (0: none, e.g. for random weights); default 256")
    parser.add_argument("--out", type=Path, default=None, help="write NAME.json, NAME.csv, NAME.png and NAME.agreement.json into this folder")
    parser.add_argument("--name", default=None, help="file stem for --out")
    args = parser.parse_args(argv)

    try:
        if args.out is not None:
            check_out_dir(args.out)
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
        options = BenchOptions(
            batch_sizes=batch_sizes, threads=args.threads, warmup_s=args.warmup, duration_s=args.duration, rounds=args.rounds, baseline=False,
        )
        report, agreed = run(args.checkpoint, options, args.max_samples)
    except (RtkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results_console().print(render_table(report))
    print(f"{'batch':>5}  {'engine':<26} {'img/s':>8} {'× ort':>7} {'× peer file':>12}")
    for batch, engine, ips, vs_ort, vs_peer in ratios(report):
        print(f"{batch:>5}  {engine:<26} {ips:8.2f} {vs_ort:7.2f} {'' if vs_peer is None else f'{vs_peer:12.3f}'}")
    if agreed is not None:
        print(f"top-1 agreement with the fp32 ONNX on {agreed['images']}:")
        for name, m in agreed.items():
            if name != "images":
                acc = f", accuracy {m['accuracy']:.2%} (fp32 {m['fp32_accuracy']:.2%})" if m["accuracy"] is not None else ""
                print(f"  {name:<26} {m['top1_agreement']:.2%}, min cosine {m['min_cosine']:.4f}{acc}")
    if args.out is not None:
        for path in write_report(report, args.out, args.name):
            print(f"wrote {path}")
        if agreed is not None:
            stem = args.name or report_name(report)
            print(f"wrote {write_atomic(args.out / f'{stem}.agreement.json', json.dumps(agreed, indent=2) + chr(10))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
