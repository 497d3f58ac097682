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
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from engines.eager import EagerEngine
from engines.ort import OrtEngine
from exporters.fp16 import check_fp16_compute, to_fp16
from exporters.int8 import CalibOptions, Int8Quantizer, calibration_images, export_hint
from exporters.mixed_precision import Judge, keep_within
from toolkit import __version__
from toolkit.core.artefacts import onnx_path_for, sha256_file, u8_path_for
from toolkit.core.checkpoint import Checkpoint, CheckpointOptions, chosen_weights, load_model
from toolkit.core.compare import ParityMetrics, Tolerance, compare, judge_random_top1, random_batches, tolerance_for
from toolkit.core.console import info, warn
from toolkit.core.errors import RtkError, first_line, require
from toolkit.core.image_sets import few_judged_warning, judged_set, prepare_images
from toolkit.core.onnx_graph import load_onnx_graph, metadata_dict
from toolkit.core.outputs import Output, check_outputs, staged
from toolkit.core.precision import CALIBRATED_PRECISIONS, ONNX_PRECISIONS, check_precision
from toolkit.core.spec import METADATA_KEY, ArtefactMeta

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
            raise RtkError(f"exporter must be one of {', '.join(EXPORTERS)}, got {self.exporter!r}")
        newest = onnx.defs.onnx_opset_version()
        lowest = MIN_OPSET[self.exporter]
        if not lowest <= self.opset <= newest:
            hint = "; use --exporter torchscript for opset 17" if self.exporter == "dynamo" and self.opset == 17 else ""
            raise RtkError(f"the {self.exporter} exporter writes opsets {lowest}..{newest}, not {self.opset}{hint}")
        if self.static_batch is not None and self.static_batch < 1:
            raise RtkError(f"--static-batch must be a positive batch size, got {self.static_batch}")
        if self.precision == "int8" and self.calib is None:
            raise RtkError("--precision int8 needs images to calibrate on: add --calib DATA (digits, an image folder or a dataset name)")
        if self.calib is not None and self.precision not in ("int8", "all"):
            raise RtkError(f"--calib calibrates the int8 export; add --precision int8 (or all), not {self.precision}")
        if self.calib is not None and self.calib.max_drop is not None and not self.check:
            raise RtkError("--max-drop measures what int8 loses on held-out images, which --no-check skips; drop --no-check")

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
) -> list[Path]:
    """Export a checkpoint (rtk or foreign) to checked ONNX file(s).

    Args:
        checkpoint_path: the ``.pth``/``.pt`` file.
        output: destination file (or folder); default next to the checkpoint.
        options: precision, opset, exporter, the check and its data (:class:`ExportOptions`).
        on_checked: called as ``on_checked(path, precision, metrics)`` after each file passes.

    Returns:
        The files written, fp32 first.

    Raises:
        RtkError: unreadable checkpoint, unwritable destination, a graph that fails the checker,
            or a parity check outside tolerance (nothing is written then).
    """

    options = options or ExportOptions()
    checkpoint_path = Path(checkpoint_path)
    outputs = _output_paths(checkpoint_path, Path(output) if output is not None else None, options.precisions)
    check_outputs([Output(p, "--output", (".onnx",), "ONNX") for p in outputs.values()], [checkpoint_path, options.data])
    model, ckpt = load_model(checkpoint_path, options=options.checkpoint_options)
    for path in outputs.values():
        _check_writable(path)
    calib = None
    if "int8" in options.precisions:  # before the check's images: a bad --calib is the likelier mistake

        calib = calibration_images(ckpt, options.calib)
        info(calib.summary())
    inputs = _check_inputs(ckpt, options, calib) if options.check else None
    if calib is not None and inputs is not None:
        _announce_judged(inputs)
    digest = sha256_file(checkpoint_path)  # recorded in every file, and the key of the trace kept for reuse
    traced = _trace_once(model, ckpt, digest, options)  # fp16 and int8 are made from the fp32 graph
    quantized = _quantize(traced, calib, options, inputs) if calib is not None else {}
    checked = []
    # Every file is staged until all have passed: with --precision all, a failed fp16 check must
    # not leave the fp32 file behind either.
    with contextlib.ExitStack() as stack:
        for key, path in outputs.items():
            tmp = stack.enter_context(staged(path))
            checked.append((path, key, _export_one(traced, digest, ckpt, key, tmp, path, options, inputs, quantized.get(key))))
    if on_checked is not None:
        for path, key, metrics in checked:
            on_checked(path, key, metrics)
    return [path for path, _, _ in checked]


def _announce_judged(inputs: "_CheckInputs") -> None:
    """Say what judges the int8 files, and warn when it is too few images to mean much."""

    count = sum(len(b) for b in inputs.images)
    how = "accuracy and top-1 agreement" if inputs.labels is not None else f"top-1 agreement and cosine, no accuracy ({inputs.unlabelled_reason})"
    info(f"judging the int8 files on {inputs.source}, none of them calibrated on: by {how}")
    warning = few_judged_warning(count, "the int8 files")
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
    if not checkpoint_path.exists():
        raise RtkError(f"{checkpoint_path} does not exist")
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


def _trace_once(model: "nn.Module", ckpt: "Checkpoint", digest: str, options: ExportOptions) -> "onnx.ModelProto":
    """:func:`trace_to_onnx`, or the graph it gave for the checkpoint bytes of sha256 ``digest`` and
    these settings last time (never modified)."""
    key = (digest, options.checkpoint_options, options.exporter, options.opset, options.static_batch)
    if key not in _LAST_TRACE:
        _LAST_TRACE.clear()
        _LAST_TRACE[key] = trace_to_onnx(model, ckpt, options)
    return _LAST_TRACE[key]


# --- one file ------------------------------------------------------------------------------


def _export_one(
    traced: "onnx.ModelProto", digest: str, ckpt: "Checkpoint", key: str, tmp: Path, path: Path, options: ExportOptions, inputs,
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
    _add_metadata(proto, ckpt, digest, precision, options, extra)
    proto = _validate(proto, path)
    if precision == "fp16":
        check_fp16_compute(proto)
    _save(proto, tmp)
    if inputs is None:
        return None
    max_drop = options.calib.max_drop if options.calib is not None else None
    return _parity_check(tmp, ckpt, precision, inputs, path, max_drop)


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


def trace_to_onnx(module: "nn.Module", ckpt: "Checkpoint", options: ExportOptions) -> "onnx.ModelProto":
    """Export a module (already in eval mode) to an in-memory ONNX model.

    Args:
        module: the fp32 network.
        ckpt: the checkpoint it came from (input size and channels).
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


def _add_metadata(
    proto: "onnx.ModelProto", ckpt: "Checkpoint", digest: str, precision: str, options: ExportOptions, extra: dict[str, Any] | None = None
) -> None:
    import torch

    record: dict[str, Any] = {
        "spec": ckpt.spec.to_dict(),
        "preprocess": ckpt.preprocess.to_dict(),
        "precision": precision,
        "exporter": f"torch {torch.__version__} {options.exporter}",
        "opset": options.opset,
        "static_batch": options.static_batch,
        "checkpoint": ckpt.path.name if ckpt.path else None,
        "checkpoint_sha256": digest,
        "checkpoint_source": ckpt.source,
        **(extra or {}),
        "weights": ckpt.weights,
        "weights_available": list(ckpt.weights_available),
    }
    if options.checkpoint_options.trust_pickle:
        record["checkpoint_pickle_trusted"] = True
    if ckpt.source == "foreign":  # where a foreign file's preprocessing was read, for `rtk inspect MODEL.onnx`
        record["preprocess_sources"] = ckpt.sources
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(record, sort_keys=True)
    proto.producer_name, proto.producer_version = "rtk", __version__
    proto.doc_string = f"{ckpt.spec.name}, {ckpt.spec.num_classes} classes, {precision}"


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
        raise RtkError(f"cannot write {path}: {exc.strerror or exc}") from None
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


def _check_inputs(ckpt: "Checkpoint", options: ExportOptions, calib=None) -> _CheckInputs:
    """The inputs of the export check and the eager fp32 reference logits, computed once for all precisions."""

    spec, pre = ckpt.spec, ckpt.preprocess
    sizes = (options.static_batch,) * 2 if options.static_batch else CHECK_BATCH_SIZES
    batches = random_batches((spec.in_chans, *pre.input_size), pre.mean, pre.std, sizes, seed=0)
    prepared = _check_images(ckpt, options, calib)
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
    with EagerEngine(ckpt.build_model(), spec, pre) as reference:
        ref = reference.run_batches(batches)
        image_ref = reference.run_batches(images) if images else None
    if prepared is None:
        return _CheckInputs(batches, ref)
    return _CheckInputs(batches, ref, images, labels, image_ref, prepared.source, prepared.unlabelled_reason)


def _check_images(ckpt: "Checkpoint", options: ExportOptions, calib):
    """The real images of the check: ``--data`` (less any image calibrated on), else the images of
    the calibration data held out of calibration, else none. Labels count where they are the model's."""
    size = ckpt.preprocess.input_size[0]
    if options.data is not None:
        exclude = calib.paths if calib is not None else ()
        return prepare_images(judged_set(options.data, size), ckpt.spec, ckpt.preprocess, options.max_samples, exclude)
    if calib is None:
        return None
    if calib.held_out is None or len(calib.held_out) == 0:
        raise RtkError(f"--calib {options.calib.data} leaves no images out of calibration to judge the int8 files on; add --data DATA")
    return prepare_images(calib.held_out, ckpt.spec, ckpt.preprocess, options.max_samples)


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
    tmp: Path, ckpt: "Checkpoint", precision: str, inputs: _CheckInputs, final: Path, max_drop: float | None = None
) -> "ParityMetrics":
    with OrtEngine(tmp, meta=ArtefactMeta(ckpt.spec, ckpt.preprocess)) as engine:
        random_logits = engine.run_batches(inputs.batches)
        checks = [compare(inputs.reference, random_logits, precision, judge_top1=judge_random_top1(precision))]
        if inputs.images is not None:
            tolerance = check_tolerance(precision, inputs.labels is not None, max_drop)
            checks.append(compare(inputs.image_reference, engine.run_batches(inputs.images), precision, tolerance=tolerance, labels=inputs.labels))
    for what, metrics in zip(("random inputs", f"real images ({inputs.source})"), checks):
        if not metrics.passed:
            hint = ""
            if precision == "int8":
                hint = "; try --max-drop 1 (keeps the layers that lose most in float), --calib-method entropy or percentile, or more --calib-samples"
            raise RtkError(
                f"{final.name} was not written: ONNX Runtime differs from eager PyTorch on {what}: {'; '.join(metrics.failures)} "
                f"(worst: sample {metrics.worst_sample}, class {ckpt.spec.class_name(metrics.worst_class)}: "
                f"eager {metrics.worst_reference:.6g} vs ort {metrics.worst_candidate:.6g}){hint}"
            )
    return checks[-1]
