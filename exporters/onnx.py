"""PyTorch checkpoint → ONNX (fp32, fp16 and calibrated int8 QDQ), checked before it is allowed to exist.

Every export runs in eval mode with a dummy batch of at least 2 (a batch-1 dummy gets
specialised into the graph) and a dynamic batch axis unless a static batch is asked for. The
input is ``input`` (NCHW float32), the output ``logits``. The checkpoint's spec and
preprocess travel in ``metadata_props`` under :data:`~toolkit.core.spec.METADATA_KEY`.

Before a file appears under its final name it passes ``onnx.checker`` (full check), strict
shape inference and a parity run of ONNX Runtime against eager PyTorch on the same inputs;
it is written to a temporary name next to the destination and renamed only then, so a
failed export leaves nothing behind.

The default exporter is torch's dynamo exporter (``torch.export`` + onnxscript): its graph
comes out with BatchNorm folded into the convolutions and no leftover Identity nodes, and it
is the one torch keeps developing. The TorchScript exporter stays available
(``exporter="torchscript"``), also the way to opset 17, below what the dynamo exporter writes.

The network is traced once per export (and the last trace is reused for the same checkpoint
bytes and settings); every precision is made from that fp32 graph. fp16 (``MODEL.fp16.onnx``) is
it converted to float16 behind float32 input and output (:func:`exporters.fp16.to_fp16`); int8
(``MODEL.int8.onnx``, and ``MODEL.int8.u8.onnx`` for the CPU runtimes, from the same
calibration) is it quantized to QDQ and calibrated on real images (:mod:`exporters.int8`), its
check judged on real images held out of the calibration, labelled or not.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from engines.eager import EagerEngine
from engines.ort import OrtEngine
from exporters.fp16 import check_fp16_compute, to_fp16
from exporters.int8 import CalibOptions, Int8Quantizer, calibration_images, export_hint
from exporters.mixed_precision import Judge, keep_within
from toolkit import __version__
from toolkit.core.artefacts import (
    ONNX_SUFFIXES,
    artefact_suffix,
    onnx_path_for,
    sha256_file,
    u8_path_for,
)
from toolkit.core.checkpoint import (
    Checkpoint,
    CheckpointOptions,
    chosen_weights,
    load_model,
)
from toolkit.core.compare import (
    ParityMetrics,
    Tolerance,
    compare,
    judge_random_top1,
    random_batches,
    tolerance_for,
)
from toolkit.core.console import info, warn
from toolkit.core.errors import RtkError, first_line, require
from toolkit.core.files import os_error, stat_for_reading
from toolkit.core.image_sets import few_judged_warning, judged_set, prepare_images
from toolkit.core.onnx_graph import (
    foreign_onnx_error,
    load_onnx_graph,
    metadata_dict,
    onnx_precision,
)
from toolkit.core.outputs import Output, check_outputs, staged
from toolkit.core.precision import (
    CALIBRATED_PRECISIONS,
    ONNX_PRECISIONS,
    check_precision,
)
from toolkit.core.spec import METADATA_KEY, ArtefactMeta
from toolkit.core.validation import COUNT, UsageError

if TYPE_CHECKING:
    import onnx
    import torch.nn as nn


EXPORTERS = ("dynamo", "torchscript")
#: The dynamo exporter's own opset (it refuses to write older ones).
DEFAULT_OPSET = 18
MIN_OPSET = {"dynamo": 18, "torchscript": 17}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
#: The key of the uint8-activation int8 file among an export's outputs (``MODEL.int8.u8.onnx``).
INT8_U8 = "int8.u8"
#: Random batch sizes of the parity check; 1 and 3 also prove the batch axis is really dynamic.
CHECK_BATCH_SIZES = (1, 3, 8)


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Attributes:
        precision: ``fp32`` (``MODEL.onnx``), ``fp16`` (``MODEL.fp16.onnx``), ``int8``
            (``MODEL.int8.onnx``, needs ``calib``) or ``all`` (fp32 and fp16, and int8 with ``calib``).
        opset: ONNX opset to pin.
        static_batch: fix the batch axis to this size; ``None`` keeps it dynamic.
        data: images that join the parity check: a dataset name, a folder (of images or of class
            folders) or a file list; accuracy is measured when they are labelled with the model's classes.
        check: run the parity check (eager vs ONNX Runtime) before accepting the file.
        exporter: ``dynamo`` or ``torchscript``.
        max_samples: at most this many real images in the parity check.
        calib: how the int8 files are calibrated (:class:`exporters.int8.CalibOptions`); the images
            of its data held out of calibration judge them when ``data`` is not given.
        progress: show progress bars (int8 calibration).
        checkpoint_options: which of the checkpoint's weights to export (EMA or raw), and
            whether to trust a pickle.
    """

    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    static_batch: int | None = None
    data: str | None = None
    check: bool = True
    exporter: str = "dynamo"
    max_samples: int = 256
    calib: "CalibOptions | None" = None
    progress: bool = True
    checkpoint_options: CheckpointOptions = field(default_factory=CheckpointOptions)

    def __post_init__(self) -> None:
        onnx = require("onnx", "ONNX export")
        check_precision(self.precision, (*ONNX_PRECISIONS, "all"))
        if self.exporter not in EXPORTERS:
            raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, got {self.exporter!r}")
        COUNT.check(self.opset, "--opset")
        newest = onnx.defs.onnx_opset_version()
        lowest = MIN_OPSET[self.exporter]
        if not lowest <= self.opset <= newest:
            hint = "; use --exporter torchscript for opset 17" if self.exporter == "dynamo" and self.opset == 17 else ""
            raise UsageError(f"the {self.exporter} exporter writes opsets {lowest}..{newest}, not {self.opset}{hint}")
        COUNT.check(self.static_batch, "--static-batch")
        if self.precision == "int8" and self.calib is None:
            raise UsageError("--precision int8 needs images to calibrate on: add --calib DATA (digits, an image folder or a dataset name)")
        if self.calib is not None and self.precision not in ("int8", "all"):
            raise UsageError(f"--calib calibrates the int8 export; add --precision int8 (or all), not {self.precision}")
        if self.calib is not None and self.calib.max_drop is not None and not self.check:
            raise UsageError("--max-drop measures what int8 loses on held-out images, which --no-check skips; drop --no-check")

    @property
    def precisions(self) -> tuple[str, ...]:
        if self.precision == "all":
            # int8 needs calibration images: without them, "all" is every precision made from the weights alone.
            return ONNX_PRECISIONS if self.calib is not None else tuple(p for p in ONNX_PRECISIONS if p not in CALIBRATED_PRECISIONS)
        return (self.precision,)


def _output_paths(checkpoint_path: Path, output: Path | None, precisions: Sequence[str]) -> dict[str, Path]:
    """Each file to write, by what it holds: ``fp32``, ``fp16``, ``int8`` and, beside the int8 file,
    ``int8.u8`` (:func:`toolkit.core.artefacts.u8_path_for`)."""
    paths = _precision_paths(checkpoint_path, output, precisions)
    if "int8" in paths:
        paths[INT8_U8] = u8_path_for(paths["int8"])
    return paths


def _precision_paths(checkpoint_path: Path, output: Path | None, precisions: Sequence[str]) -> dict[str, Path]:
    if output is None:
        return {p: onnx_path_for(checkpoint_path, p) for p in precisions}
    output = Path(output)
    if output.is_dir():
        return {p: onnx_path_for(output / checkpoint_path.name, p) for p in precisions}
    if len(precisions) == 1:
        return {precisions[0]: output}
    # -o X.onnx with several precisions: X.onnx, X.fp16.onnx (and X.int8.onnx).
    base = output.with_suffix("") if output.suffix == ".onnx" else output
    return {p: onnx_path_for(base.with_name(base.name + ".pth"), p) for p in precisions}


def export_onnx(
    checkpoint_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    options: ExportOptions | None = None,
    on_checked=None,
    meta: ArtefactMeta | None = None,
) -> list[Path]:
    """Export a checkpoint (rtk or foreign) to checked ONNX file(s), or quantize an fp32 ONNX file to int8.

    An ONNX file given in place of the checkpoint (another tool's, say) can only be made int8: its
    graph is quantized as it is, and the check's reference is that file on ONNX Runtime in fp32.

    Args:
        checkpoint_path: the ``.pth``/``.pt`` file, a Hub folder, or an fp32 ``.onnx`` for int8.
        output: destination file (or folder); default next to the checkpoint.
        options: precision, opset, exporter, the check and its data (:class:`ExportOptions`).
        on_checked: called as ``on_checked(path, precision, metrics)`` after each file passes.
        meta: the spec and preprocessing of an ONNX file that carries none
            (:func:`toolkit.core.foreign_onnx.foreign_meta`).

    Returns:
        The files written, fp32 first.

    Raises:
        RtkError: unreadable checkpoint, unwritable destination, a graph that fails the checker,
            or a parity check outside tolerance (nothing is written then).
    """

    options = options or ExportOptions()
    checkpoint_path = Path(checkpoint_path)
    from_onnx = artefact_suffix(checkpoint_path) in ONNX_SUFFIXES
    if from_onnx:
        _check_onnx_export(checkpoint_path, options)
    outputs = _output_paths(checkpoint_path, Path(output) if output is not None else None, options.precisions)
    check_outputs(
        [Output(p, "--output", (".onnx",), "ONNX", written_by_rtk=exported_by_rtk) for p in outputs.values()],
        [checkpoint_path, options.data],
    )
    source = _onnx_source(checkpoint_path, meta) if from_onnx else _checkpoint_source(checkpoint_path, options)
    for path in outputs.values():
        _check_writable(path)
    calib = None
    if "int8" in options.precisions:  # before the check's images: a bad --calib is the likelier mistake
        calib = calibration_images(source.meta, options.calib)
        info(calib.summary())
    inputs = _check_inputs(source, options, calib) if options.check else None
    if inputs is not None and inputs.images is not None:
        _announce_judged(inputs, "the int8 files" if calib is not None else "the ONNX files")
    traced = source.trace(options)  # fp16 and int8 are made from the fp32 graph
    quantized = _quantize(traced, calib, options, inputs) if calib is not None else {}
    checked = []
    # Every file is staged until all have passed: with --precision all, a failed fp16 check must
    # not leave the fp32 file behind either.
    with contextlib.ExitStack() as stack:
        for key, path in outputs.items():
            tmp = stack.enter_context(staged(path))
            checked.append((path, key, _export_one(traced, source, key, tmp, path, options, inputs, quantized.get(key))))
    if on_checked is not None:
        for path, key, metrics in checked:
            on_checked(path, key, metrics)
    return [path for path, _, _ in checked]


@dataclass(frozen=True)
class _Source:
    """What an export reads: the model's spec and preprocess, its fp32 reference, its fp32 graph,
    and what every file written records of where it came from.

    Attributes:
        path: the checkpoint (or Hub folder), or the fp32 ONNX file quantized as it is.
        meta: spec and preprocess.
        reference: opens the engine the files are checked against (eager fp32, or the ONNX file on ONNX Runtime).
        trace: the fp32 graph, given the export options.
        record: the metadata keys saying where the files came from (``checkpoint_sha256``…).
        reference_name: the reference, in messages.
    """

    path: Path
    meta: ArtefactMeta
    reference: Callable[[], Any]
    trace: Callable[[ExportOptions], "onnx.ModelProto"]
    record: dict[str, Any]
    reference_name: str = "eager PyTorch"


def _checkpoint_source(path: Path, options: ExportOptions) -> _Source:
    model, ckpt = load_model(path, options=options.checkpoint_options)
    digest = sha256_file(path)  # recorded in every file, and the key of the trace kept for reuse
    record: dict[str, Any] = {
        "checkpoint": ckpt.path.name if ckpt.path else None, "checkpoint_sha256": digest, "checkpoint_source": ckpt.source,
        "weights": ckpt.weights, "weights_available": list(ckpt.weights_available),
    }  # fmt: skip
    if options.checkpoint_options.trust_pickle:
        record["checkpoint_pickle_trusted"] = True
    if ckpt.source == "foreign":  # where a foreign file's preprocessing was read, for `rtk inspect MODEL.onnx`
        record["preprocess_sources"] = ckpt.sources
    meta = ArtefactMeta(ckpt.spec, ckpt.preprocess)
    return _Source(
        path, meta, lambda: EagerEngine(ckpt.build_model(), ckpt.spec, ckpt.preprocess),
        lambda opts: _trace_once(model, meta, digest, opts), record,
    )  # fmt: skip


def _check_onnx_export(path: Path, options: ExportOptions) -> None:
    """An ONNX file in place of a checkpoint: it can be quantized to int8, and nothing else can be made of it."""
    if options.precision != "int8":
        raise RtkError(
            f"{path} already is an ONNX file, and rtk export makes ONNX files from a checkpoint; run it as it is "
            f"(rtk parity {path}, rtk bench {path}, rtk predict DIR -m {path}, rtk build {path} for TensorRT), or quantize "
            f"it with `rtk export {path} --precision int8 --calib DATA`"
        )


def _onnx_source(path: Path, meta: ArtefactMeta | None) -> _Source:
    """An fp32 ONNX file as the source of an int8 export: its graph quantized as it is, checked against itself on ONNX Runtime."""
    import onnx

    graph = load_onnx_graph(path)
    stored = metadata_dict(graph)
    if stored is None and meta is None:
        raise foreign_onnx_error(path)
    meta = ArtefactMeta.from_dict(stored) if stored is not None else meta
    precision = onnx_precision(graph)
    if precision != "fp32":
        raise RtkError(f"{path} holds {precision} weights; int8 is calibrated from an fp32 graph, so give the fp32 ONNX file")
    digest = sha256_file(path)
    record: dict[str, Any] = {"source_onnx": path.name, "source_onnx_sha256": digest}
    record.update({k: v for k, v in (stored or {}).items() if k.startswith(("checkpoint", "weights", "preprocess_sources"))})

    def trace(options: ExportOptions) -> "onnx.ModelProto":
        try:
            return onnx.load(str(path))  # with its external weights: the quantizer needs them
        except Exception as exc:  # protobuf's and onnx's own errors
            raise RtkError(f"{path} cannot be read whole ({type(exc).__name__}: {first_line(exc, 200)})") from None

    return _Source(path, meta, lambda: OrtEngine(path, meta=meta, precision="fp32"), trace, record, f"{path.name} on ONNX Runtime fp32")


def _announce_judged(inputs: "_CheckInputs", what: str) -> None:
    """Say how many images judge the files and by what, and warn when they are too few to mean much."""

    count = sum(len(b) for b in inputs.images)
    how = "accuracy and top-1 agreement" if inputs.labels is not None else f"top-1 agreement and cosine, no accuracy ({inputs.unlabelled_reason})"
    unseen = ", none of them calibrated on" if what == "the int8 files" else ""
    info(f"judging {what} on {inputs.source}{unseen}: by {how}")
    if inputs.assumed:
        warn(inputs.assumed)
    warning = few_judged_warning(count, what)
    if warning:
        warn(warning)


def _quantize(traced: "onnx.ModelProto", calib, options: ExportOptions, inputs: "_CheckInputs | None") -> dict[str, tuple]:
    """Both int8 layouts from one calibration, with the layers ``--keep-float`` names (and the
    ones ``--max-drop`` finds) left in float: ``{"int8": (model, record), "int8.u8": (model, record)}``."""

    with Int8Quantizer(traced, calib, options.calib, options.static_batch, options.progress) as quantizer:
        float_nodes = quantizer.float_nodes(options.calib.keep_float)
        searched = None
        if options.calib.max_drop is not None:
            searched = keep_within(quantizer, float_nodes, options.calib.max_drop, _judge(inputs))
            float_nodes = searched.float_nodes
            _announce_kept(searched.record)
        out = {}
        for key, layout in (("int8", "s8"), (INT8_U8, "u8")):
            model = quantizer.quantize(layout, float_nodes)
            record = quantizer.record(layout, float_nodes)
            if searched is not None:
                record["max_drop"] = searched.record
            out[key] = (model, record)
    return out


def _announce_kept(record: dict[str, Any]) -> None:
    """One line: which layers ``--max-drop`` kept in float, what the files lose with them, what the search cost."""

    kept = record["kept_float"]
    which = f"kept {len(kept)} layer{'s' if len(kept) != 1 else ''} in float ({', '.join(kept)})" if kept else "every layer quantized"
    info(
        f"--max-drop {record['target']:g}: {which}; the int8 files lose {record['drop']['s8']:.2f} (symmetric) and "
        f"{record['drop']['u8']:.2f} (uint8) {record['metric']} on {record['images']} held-out images; "
        f"{record['trials']} trial quantizations, {record['seconds']:.0f} s"
    )


def _judge(inputs: "_CheckInputs | None"):
    """What the ``--max-drop`` search measures on: the check's real images and eager fp32's logits on them."""

    if inputs is None or inputs.images is None:
        raise RtkError("--max-drop measures what int8 loses on real images, and this export has none to judge on")
    return Judge(inputs.images, inputs.image_reference, inputs.labels)


def ensure_onnx(
    checkpoint_path: str | os.PathLike, precision: str = "fp32", checkpoint_options: CheckpointOptions | None = None
) -> Path:
    """The ONNX next to a checkpoint, exported (and checked) when missing or made from other weights.

    ``MODEL.onnx`` is fresh while the checkpoint sha256 it records is the checkpoint's own and it
    holds the weights ``checkpoint_options`` choose (EMA or raw), so touching or copying a
    checkpoint costs nothing, while retraining it or switching ``--weights`` re-exports. A file
    under that name that rtk did not export is never overwritten.

    An int8 file is never exported here, since calibrating needs data: a missing or stale
    ``MODEL.int8.onnx`` is refused with the ``rtk export`` command that makes it.

    Args:
        checkpoint_path: the ``.pth``/``.pt`` file.
        precision: ``fp32`` (``MODEL.onnx``), ``fp16`` (``MODEL.fp16.onnx``) or ``int8`` (``MODEL.int8.onnx``).
        checkpoint_options: which weights to export, and whether to trust a pickle.

    Returns:
        The ONNX file's path.

    Raises:
        RtkError: the checkpoint is missing, a foreign file sits where the ONNX would go, or the
            int8 file is missing or stale.
    """
    check_precision(precision, ONNX_PRECISIONS, "an ONNX file's precision")
    checkpoint_options = checkpoint_options or CheckpointOptions()
    checkpoint_path = Path(checkpoint_path)
    path = onnx_path_for(checkpoint_path, precision)
    stat_for_reading(checkpoint_path)  # missing, or refused by the system: one sentence
    if path.exists():
        record = _export_record(path)
        if record is None:
            raise RtkError(
                f"{path} exists but was not exported by rtk, so it is not overwritten; move it away, "
                f"or pass {path.name} itself in place of {checkpoint_path.name}"
            )
        wanted = chosen_weights(checkpoint_options.weights, record.get("weights_available") or ())
        if (
            record.get("checkpoint_sha256") == sha256_file(checkpoint_path)
            and record.get("precision") == precision
            and record.get("weights") == wanted
        ):
            return path
    if precision == "int8":
        calib = (record or {}).get("calibration", {}).get("data") if path.exists() else None
        state = "was made from other weights" if path.exists() else "does not exist"
        raise RtkError(f"{path} {state}, and an int8 file cannot be made without calibration images; run {export_hint(checkpoint_path, calib)}")

    info(f"exporting {checkpoint_path.name} → {path.name} ({precision})")
    return export_onnx(checkpoint_path, options=ExportOptions(precision=precision, checkpoint_options=checkpoint_options))[0]


def checkpoint_options_of(onnx_path: str | os.PathLike, checkpoint_path: str | os.PathLike) -> CheckpointOptions:
    """The options an rtk ONNX file was exported with, to export its sibling (the fp16 one) alike.

    The weights choice is the one it records. Trust in a pickled checkpoint carries over only to
    the very file that was trusted: its sha256 must still be the recorded one.
    """
    record = _export_record(Path(onnx_path)) or {}
    trusted = bool(record.get("checkpoint_pickle_trusted")) and record.get("checkpoint_sha256") == sha256_file(checkpoint_path)
    return CheckpointOptions(weights=record.get("weights") or "ema", trust_pickle=trusted)


def exported_by_rtk(path: str | os.PathLike) -> bool:
    """Whether an ONNX file carries rtk's metadata: one that does not is never overwritten."""
    return _export_record(Path(path)) is not None


def _export_record(path: Path) -> dict[str, Any] | None:
    """The rtk metadata of an ONNX file, or ``None`` when it has none or cannot be read."""

    try:
        return metadata_dict(load_onnx_graph(path))
    except RtkError:
        return None


#: The last trace, reused while the same weights are exported with the same settings in one
#: process (parity preparing ort and then ort-fp16, the demo's int8 after its fp32 and fp16):
#: tracing is most of an export's time. One entry, so no second network's graph is kept.
_LAST_TRACE: dict[tuple, "onnx.ModelProto"] = {}


def _trace_once(model: "nn.Module", meta: ArtefactMeta, digest: str, options: ExportOptions) -> "onnx.ModelProto":
    """:func:`trace_to_onnx`, or the graph it gave for the checkpoint bytes of sha256 ``digest`` and
    these settings last time (never modified)."""
    key = (digest, options.checkpoint_options, options.exporter, options.opset, options.static_batch)
    if key not in _LAST_TRACE:
        _LAST_TRACE.clear()
        _LAST_TRACE[key] = trace_to_onnx(model, meta, options)
    return _LAST_TRACE[key]


# --- one file ------------------------------------------------------------------------------


def _export_one(
    traced: "onnx.ModelProto", source: _Source, key: str, tmp: Path, path: Path, options: ExportOptions, inputs,
    quantized: tuple | None = None,
) -> "ParityMetrics | None":
    """Make one file from the traced fp32 graph (left as it is), validate and check it into ``tmp``,
    the staged file that becomes ``path``. ``key`` is a precision, or ``int8.u8``; an int8 file's
    graph and calibration record come quantized already (``quantized``)."""
    import onnx

    precision = "int8" if key == INT8_U8 else key
    proto = onnx.ModelProto()
    proto.CopyFrom(quantized[0] if quantized is not None else traced)
    extra = {"calibration": quantized[1]} if quantized is not None else None
    if precision == "fp16":
        proto = to_fp16(proto)
    _add_metadata(proto, source, precision, options, extra)
    proto = _validate(proto, path)
    if precision == "fp16":
        check_fp16_compute(proto)
    _save(proto, tmp)
    if inputs is None:
        return None
    max_drop = options.calib.max_drop if options.calib is not None else None
    return _parity_check(tmp, source, precision, inputs, path, max_drop)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings, progress prints and log lines (they are not the user's business)."""
    import logging  # only an export needs it: `rtk --help` must not pay for it

    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def trace_to_onnx(module: "nn.Module", ckpt: "Checkpoint | ArtefactMeta", options: ExportOptions) -> "onnx.ModelProto":
    """Export a module (already in eval mode) to an in-memory ONNX model.

    Args:
        module: the fp32 network.
        ckpt: the checkpoint it came from, or its spec and preprocess (input size and channels).
        options: opset, static batch, exporter.

    Returns:
        The ONNX model with input ``input`` and output ``logits``.
    """
    import onnx
    import torch

    batch = options.static_batch or 2  # never 1: a batch-1 dummy gets specialised into the graph
    dummy = torch.randn(batch, ckpt.spec.in_chans, *ckpt.preprocess.input_size)
    module = module.eval()
    try:
        with _quiet(), torch.no_grad():
            if options.exporter == "dynamo":
                dynamic = None if options.static_batch else ({0: torch.export.Dim("batch")},)
                program = torch.onnx.export(
                    module, (dummy,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=dynamic, opset_version=options.opset, verbose=False, optimize=True,
                )
                return program.model_proto
            buffer = io.BytesIO()
            dynamic_axes = None if options.static_batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
            torch.onnx.export(
                module, (dummy,), buffer, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes, opset_version=options.opset, do_constant_folding=True,
            )
            return onnx.load_from_string(buffer.getvalue())
    except RtkError:
        raise
    except Exception as exc:  # the exporters raise many types; the first line says what broke
        other = "torchscript" if options.exporter == "dynamo" else "dynamo"
        raise RtkError(f"the {options.exporter} exporter failed on {ckpt.spec.name}: {first_line(exc)}; try --exporter {other}") from None


def _add_metadata(proto: "onnx.ModelProto", source: _Source, precision: str, options: ExportOptions, extra: dict[str, Any] | None = None) -> None:
    import torch

    spec = source.meta.spec
    made = f"quantized from {source.path.name}" if "source_onnx" in source.record else f"torch {torch.__version__} {options.exporter}"
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), options.opset)
    record: dict[str, Any] = {
        "spec": spec.to_dict(),
        "preprocess": source.meta.preprocess.to_dict(),
        "precision": precision,
        "exporter": made,
        "opset": opset,
        "static_batch": options.static_batch,
        **source.record,
        **(extra or {}),
    }
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(record, sort_keys=True)
    proto.producer_name, proto.producer_version = "rtk", __version__
    proto.doc_string = f"{spec.name}, {spec.num_classes} classes, {precision}"


def _validate(proto: "onnx.ModelProto", path: Path) -> "onnx.ModelProto":
    """onnx.checker (full check) and strict shape inference; returns the model with inferred shapes."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise RtkError(f"the exported graph for {path.name} fails the ONNX checker: {first_line(exc)}") from None


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise RtkError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, path, "write") from None
    if not os.access(path.parent, os.W_OK):
        raise RtkError(f"cannot write {path}: no permission to write in {path.parent}")


def _save(proto: "onnx.ModelProto", path: Path) -> None:
    data = proto.SerializeToString()  # every zoo model is far below protobuf's 2 GB limit
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# --- the parity check ----------------------------------------------------------------------


@dataclass(frozen=True)
class _CheckInputs:
    batches: tuple  # random NCHW float32 batches
    reference: Any  # eager fp32 logits of the random batches (np.ndarray)
    images: Any = None  # real images, in batches
    labels: Any = None  # their classes, in the model's order; None when unlabelled or of other classes
    image_reference: Any = None
    source: str | None = None  # what the real images are
    unlabelled_reason: str | None = None
    assumed: str | None = None  # what matching the images' classes to the model's took for granted


def _check_inputs(source: _Source, options: ExportOptions, calib=None) -> _CheckInputs:
    """The inputs of the export check and the fp32 reference's logits, computed once for all precisions."""

    spec, pre = source.meta.spec, source.meta.preprocess
    sizes = (options.static_batch,) * 2 if options.static_batch else CHECK_BATCH_SIZES
    batches = random_batches((spec.in_chans, *pre.input_size), pre.mean, pre.std, sizes, seed=0)
    prepared = _check_images(source.meta, options, calib)
    images = labels = None
    if prepared is not None:
        images, labels = prepared.images, prepared.labels
        chunk = options.static_batch or 32
        if options.static_batch:  # a static graph takes only whole batches
            keep = len(images) // chunk * chunk
            if keep == 0:
                raise RtkError(f"the check has {len(images)} real images, fewer than one static batch of {chunk}; give more with --data")
            images, labels = images[:keep], labels[:keep] if labels is not None else None
        images = [images[i : i + chunk] for i in range(0, len(images), chunk)]
    with source.reference() as reference:
        ref = reference.run_batches(batches)
        image_ref = reference.run_batches(images) if images else None
    if prepared is None:
        return _CheckInputs(batches, ref)
    return _CheckInputs(batches, ref, images, labels, image_ref, prepared.source, prepared.unlabelled_reason, prepared.assumed)


def _check_images(meta: ArtefactMeta, options: ExportOptions, calib):
    """The real images of the check: ``--data`` (less any image calibrated on), else the images of
    the calibration data held out of calibration, else none. Labels count where they are the model's."""
    size = meta.preprocess.input_size[0]
    if options.data is not None:
        exclude = calib.paths if calib is not None else ()
        return prepare_images(judged_set(options.data, size), meta.spec, meta.preprocess, options.max_samples, exclude)
    if calib is None:
        return None
    if calib.held_out is None or len(calib.held_out) == 0:
        raise RtkError(f"--calib {options.calib.data} leaves no images out of calibration to judge the int8 files on; add --data DATA")
    return prepare_images(calib.held_out, meta.spec, meta.preprocess, options.max_samples)


#: The lowest per-image cosine similarity of an int8 file's logits to eager fp32's on unlabelled
#: images, where no accuracy can stand guard: a trained ResNet-18 on the digits keeps 0.998.
UNLABELLED_INT8_MIN_COSINE = 0.98


def check_tolerance(precision: str, labelled: bool, max_drop: float | None = None) -> "Tolerance":
    """How the export check judges a file on real images.

    int8 on labelled images: top-1 agreement and accuracy, as ``rtk parity`` does; on unlabelled
    ones (or other classes) top-1 agreement and cosine to eager fp32. With ``max_drop`` (points)
    the one measure ``--max-drop`` bounds is judged: accuracy drop, or top-1 disagreement.
    """
    if precision != "int8":
        return tolerance_for(precision)
    if max_drop is None:
        return tolerance_for("int8") if labelled else tolerance_for("int8", min_cosine=UNLABELLED_INT8_MIN_COSINE)
    if labelled:
        return tolerance_for("int8", min_top1=0.0, max_accuracy_drop=max_drop / 100)
    return tolerance_for("int8", min_top1=1.0 - max_drop / 100)


def _parity_check(
    tmp: Path, source: _Source, precision: str, inputs: _CheckInputs, final: Path, max_drop: float | None = None
) -> "ParityMetrics":
    with OrtEngine(tmp, meta=source.meta) as engine:
        # finite=False: an fp16 file that overflows is refused with compare's count of its non-finite logits.
        random_logits = engine.run_batches(inputs.batches, finite=False)
        checks = [compare(inputs.reference, random_logits, precision, judge_top1=judge_random_top1(precision))]
        if inputs.images is not None:
            tolerance = check_tolerance(precision, inputs.labels is not None, max_drop)
            image_logits = engine.run_batches(inputs.images, finite=False)
            checks.append(compare(inputs.image_reference, image_logits, precision, tolerance=tolerance, labels=inputs.labels))
    for what, metrics in zip(("random inputs", f"real images ({inputs.source})"), checks):
        if not metrics.passed:
            hint = ""
            if precision == "int8":
                hint = "; try --max-drop 1 (keeps the layers that lose most in float), --calib-method entropy or percentile, or more --calib-samples"
            raise RtkError(
                f"{final.name} was not written: on ONNX Runtime it differs from {source.reference_name} on {what}: {'; '.join(metrics.failures)} "
                f"(worst: sample {metrics.worst_sample}, class {source.meta.spec.class_name(metrics.worst_class)}: "
                f"reference {metrics.worst_reference:.6g} vs {final.name} {metrics.worst_candidate:.6g}){hint}"
            )
    return checks[-1]
