"""Classify a folder (or one file) of images with any engine.

Decoding runs in a thread pool, ahead of inference by a bounded window, so the engine is fed
full batches while the next ones are being decoded (Pillow and NumPy release the GIL for the
heavy parts). Unreadable files become rows with an ``error`` and are skipped. A folder is read as
every command reads one (:func:`toolkit.core.folders.read_folder`): images laid out as
``<class>/image`` are labelled by their folder and scored where the folder names are the model's
classes (accuracy, confusion matrix).
"""

from __future__ import annotations

import csv
import io
import os
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engines.base import Engine, NonFiniteOutput
from toolkit.core.artefacts import CHECKPOINT_SUFFIXES, ENGINE_SUFFIXES, ONNX_SUFFIXES, artefact_suffix
from toolkit.core.errors import RtkError, require
from toolkit.core.files import stat_for_reading
from toolkit.core.folders import read_folder
from toolkit.core.image_sets import match_classes
from toolkit.core.images import load_image
from toolkit.core.metrics import ClassificationReport
from toolkit.core.outputs import json_text
from toolkit.core.spec import ModelSpec, Preprocess
from toolkit.core.transforms import image_to_array
from toolkit.core.validation import COUNT, COUNT_OR_ZERO

#: Output formats of :func:`format_predictions`.
FORMATS = ("json", "jsonl", "csv")
#: Columns of the CSV output, in order (also the keys of every JSON/JSONL row).
CSV_FIELDS = ("path", "label", "top1", "top1_index", "top1_prob", "top_k", "error")
#: Environment variable naming the default model.
MODEL_ENV = "RTK_MODEL"
#: Config file (in the image folder or the working directory) naming the default model.
CONFIG_NAME = "rtk.toml"
DEFAULT_BATCH_SIZE = 32


def default_workers() -> int:
    """Decoding threads used when none are asked for: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict` runs.

    Attributes:
        top_k: classes kept per image (capped at the number of classes).
        batch_size: images per engine call; ``None`` = 32, or the engine's maximum if smaller.
        workers: decoding threads; 0 decodes in the calling thread, one image at a time.
        recursive: also search the subfolders of a folder with images at its top, at any depth
            (class folders, ``<class>/image``, are always searched).
        strict: stop with an error at the first file that cannot be read.
    """

    top_k: int = 5
    batch_size: int | None = None
    workers: int = field(default_factory=default_workers)
    recursive: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        for flag, value, rule in (("--top-k", self.top_k, COUNT), ("--batch-size", self.batch_size, COUNT), ("--workers", self.workers, COUNT_OR_ZERO)):
            rule.check(value, flag)


@dataclass(frozen=True)
class Prediction:
    """The outcome for one file.

    Attributes:
        path: the image file.
        label: its class when it lies in a folder named after one of the model's classes.
        top_k: ``(class index, probability)`` pairs, most probable first; empty on error.
        error: why the file could not be classified, or ``None``.
    """

    path: Path
    label: str | None = None
    top_k: tuple[tuple[int, float], ...] = ()
    error: str | None = None

    @property
    def top1(self) -> int | None:
        return self.top_k[0][0] if self.top_k else None


@dataclass
class PredictResult:
    """Everything one :func:`predict` run produced.

    Attributes:
        root: the folder searched (the file's folder for a single image).
        predictions: one entry per file, in path order, failures included.
        class_names: the model's class names (indices as text when the artefact has none).
        engine: the engine's name; ``device`` where it ran.
        seconds: wall time of decoding and inference (model loading excluded).
        evaluation: accuracy and confusion matrix over the labelled images, when there are any.
        ignored: files passed over because their suffix is not an image suffix (not failures:
            a README beside the photos is normal, but the user should see what was not read).
        notes: what the scoring assumed, or why images in class folders were not scored.
    """

    root: Path
    predictions: list[Prediction]
    class_names: tuple[str, ...]
    engine: str
    device: str
    seconds: float
    evaluation: "ClassificationReport | None" = None
    ignored: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Prediction]:
        return [p for p in self.predictions if p.error is not None]

    @property
    def classified(self) -> int:
        return len(self.predictions) - len(self.failures)

    @property
    def images_per_s(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else float("nan")

    def row(self, p: Prediction) -> dict[str, Any]:
        """One prediction as a JSON-ready dict with the keys :data:`CSV_FIELDS`."""
        names = self.class_names
        top = [{"class": names[i], "index": i, "prob": round(prob, 6)} for i, prob in p.top_k]
        return {
            "path": str(p.path),
            "label": p.label,
            "top1": top[0]["class"] if top else None,
            "top1_index": top[0]["index"] if top else None,
            "top1_prob": top[0]["prob"] if top else None,
            "top_k": top,
            "error": p.error,
        }

    def summary(self) -> dict[str, Any]:
        """Run-level figures (everything but the rows)."""
        ev = self.evaluation
        return {
            "root": str(self.root),
            "engine": self.engine,
            "device": self.device,
            "images": len(self.predictions),
            "classified": self.classified,
            "failed": len(self.failures),
            "ignored": [str(p) for p in self.ignored],
            "seconds": round(self.seconds, 4),
            "images_per_s": round(self.images_per_s, 2) if self.classified else None,
            "evaluation": ev.to_dict() if ev is not None else None,
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- model


def resolve_model(model: str | os.PathLike | None, target: str | os.PathLike) -> Path:
    """The model to predict with.

    In order: ``model`` when given; the ``RTK_MODEL`` environment variable; ``model = "…"`` in
    an ``rtk.toml`` in the image folder, then in the working directory (relative paths are
    relative to that file); the only model artefact (``.pth``, ``.pt``, ``.onnx``, ``.engine``…)
    in the working directory.

    Args:
        model: an explicit checkpoint, ONNX file or engine, or ``None``.
        target: the image folder or file being classified.

    Returns:
        The model's path (not yet checked to exist; :func:`engines.load` does that).

    Raises:
        RtkError: nothing names a model, or the working directory holds several.
    """
    if model:
        return Path(model)
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    target = Path(target)
    folder = target if target.is_dir() else target.parent
    for config in dict.fromkeys([folder / CONFIG_NAME, Path.cwd() / CONFIG_NAME]):
        if config.is_file():
            return config.parent / _model_from_config(config)

    suffixes = CHECKPOINT_SUFFIXES + ONNX_SUFFIXES + ENGINE_SUFFIXES
    found = sorted(p for p in Path.cwd().iterdir() if p.is_file() and artefact_suffix(p) in suffixes)
    if len(found) == 1:
        return Path(found[0].name)
    where = f"; the working directory holds {len(found)} ({', '.join(p.name for p in found[:6])})" if found else ""
    raise RtkError(
        f"no model given: pass --model MODEL, set {MODEL_ENV}, or name it in {CONFIG_NAME} (model = \"path\"){where}"
    )


def _model_from_config(config: Path) -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10

        tomllib = require("tomli", f"reading {CONFIG_NAME}")
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RtkError(f"{config} is not valid TOML: {exc}") from None
    section = data.get("predict", {})
    if not isinstance(section, dict):  # predict = "model.pth" where a table belongs
        raise RtkError(
            f'{config}: predict must be a table ([predict] with model = "path"), not a {_toml_type(section)}; '
            'or write model = "path" at the top'
        )
    key, value = ("predict.model", section["model"]) if "model" in section else ("model", data.get("model"))
    if value is None:
        raise RtkError(f'{config} does not name a model; add a line model = "path/to/model.pth"')
    if not isinstance(value, str) or not value.strip():
        raise RtkError(f'{config}: {key} must be a path in quotes (model = "path/to/model.pth"), not the {_toml_type(value)} {value!r}')
    return value


def _toml_type(value: Any) -> str:
    """What TOML calls a value's type, for a message."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), type(value).__name__)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ImageInputs:
    """The files :func:`collect_images` found.

    Attributes:
        root: the folder searched (the file's folder for a single image).
        files: the image files to classify, sorted.
        labels: ``labels[i]`` is the class folder ``files[i]`` lies in, or ``None``.
        ignored: visible files passed over because their suffix is not an image suffix.
        class_names: the class folders, sorted, when the folder is laid out as ``<class>/image``.
    """

    root: Path
    files: list[Path]
    labels: list[str | None]
    ignored: list[Path] = field(default_factory=list)
    class_names: tuple[str, ...] | None = None


def collect_images(path: str | os.PathLike, recursive: bool = False) -> ImageInputs:
    """The files to classify and, for a folder of class folders, their labels.

    The folder is read as every command reads one (:func:`toolkit.core.folders.read_folder`): a
    folder with no image at its top whose sub-folders hold images is a labelled folder
    (``<class>/image``, as torchvision's ImageFolder), each class folder searched at any depth;
    a folder with images at its top is read at the top only, or at any depth with ``recursive``.

    Args:
        path: a folder or one image file.
        recursive: search every subfolder of a folder with images at its top.

    Returns:
        The root, the image files with their labels, and the files ignored for their suffix.

    Raises:
        RtkError: the path does not exist, or the folder holds no image files.
    """
    path = Path(path)
    if not stat.S_ISDIR(stat_for_reading(path).st_mode):  # one file (a pipe or device too: load_image says what it is)
        return ImageInputs(path.parent, [path], [None])
    folder = read_folder(path, recursive)
    names = folder.class_names
    labels = [names[i] for i in folder.labels] if names is not None and folder.labels is not None else [None] * len(folder.files)
    return ImageInputs(path, list(folder.files), labels, list(folder.ignored), names)


def prepare_image(path: Path, pre: Preprocess) -> tuple[np.ndarray | None, str | None]:
    """Decode and preprocess one file; ``(array, None)`` or ``(None, reason)``."""

    try:
        img = load_image(path)
    except RtkError as exc:
        return None, str(exc)
    try:
        return image_to_array(img, pre), None
    except (ValueError, OSError) as exc:  # e.g. a pixel mode Pillow cannot convert (LAB, HSV)
        return None, f"cannot convert {img.mode} pixels ({exc})"


def decode_stream(files: Sequence[Path], pre: Preprocess, workers: int, window: int) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """:func:`prepare_image` for every file, in order, decoded up to ``window`` files ahead.

    Args:
        files: the files.
        pre: preprocessing.
        workers: threads; 0 decodes lazily in the caller's thread.
        window: how many files may be decoded but not yet consumed (bounds memory).
    """
    if workers == 0:
        for f in files:
            yield prepare_image(f, pre)
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers, thread_name_prefix="rtk-decode")
    pending: deque = deque()
    todo = iter(files)
    try:
        for f in todo:
            pending.append(pool.submit(prepare_image, f, pre))
            if len(pending) >= window:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(prepare_image, nxt, pre))
            yield done
    finally:
        # Reached early on --strict or when the consumer fails: drop what is still queued.
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- running


def predict(
    path: str | os.PathLike,
    engine: "Engine",
    options: PredictOptions = PredictOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Classify every image under ``path`` with ``engine``.

    Args:
        path: a folder or an image file.
        engine: a loaded engine (see :func:`engines.load`); its spec and preprocess are used.
        options: batching, decoding and search options.
        progress: called as ``progress(done, total)`` after every batch.

    Returns:
        The predictions (failures included), timing and, for labelled folders, the evaluation.

    Raises:
        RtkError: nothing to classify, a bad batch size for the engine, or (with ``strict``) a
            file that cannot be read.
    """
    class_names = tuple(engine.spec.class_name(i) for i in range(engine.spec.num_classes))
    inputs = collect_images(path, options.recursive)
    files, labels = inputs.files, inputs.labels
    # Never more rows than there are files: -b 100000 on a folder of ten allocates ten.
    batch_size = max(min(engine_batch_size(engine, options.batch_size), len(files)), engine.min_batch)
    top_k = min(options.top_k, engine.spec.num_classes)
    window = 2 * batch_size + options.workers
    results: list[Prediction | None] = [None] * len(files)
    batch = _batch_buffer(batch_size, engine.input_shape)
    members: list[int] = []  # file indices in the current batch
    done = 0
    start = time.perf_counter()

    def flush() -> None:
        nonlocal done
        n = len(members)
        # A batch smaller than the engine's minimum (a static-batch model) is padded with zeros.
        size = max(n, engine.min_batch)
        batch[n:size] = 0.0
        logits = _logits(engine, batch[:size], [files[i] for i in members])[:n]
        for index, row in zip(members, top_k_probs(logits, top_k)):
            results[index] = Prediction(files[index], labels[index], row)
        done += n
        members.clear()
        if progress:
            progress(done, len(files))

    for index, (array, error) in enumerate(decode_stream(files, engine.preprocess, options.workers, window)):
        if error is not None:
            if options.strict:
                raise RtkError(f"{files[index]}: {error} (--strict stops at the first unreadable file)")
            results[index] = Prediction(files[index], labels[index], error=error)
            done += 1
            continue
        batch[len(members)] = array
        members.append(index)
        if len(members) == batch_size:
            flush()
    if members:
        flush()
    seconds = time.perf_counter() - start
    predictions = [p for p in results if p is not None]
    evaluation, notes = evaluate_predictions(predictions, engine.spec, inputs.class_names)
    return PredictResult(inputs.root, predictions, class_names, engine.name, engine.device, seconds, evaluation, inputs.ignored, notes)


def _logits(engine: "Engine", batch: np.ndarray, files: Sequence[Path]) -> np.ndarray:
    """The engine's logits for a batch of ``files``; NaN ones are refused naming the first file without an answer."""
    try:
        return engine(batch)
    except NonFiniteOutput as exc:  # rows past the files are a static batch's zero padding
        first = next((files[row] for row in exc.rows if row < len(files)), None)
        raise RtkError(f"{exc} (first: {first})" if first is not None else str(exc)) from None


def _batch_buffer(size: int, shape: Sequence[int]) -> np.ndarray:
    """The reusable input batch; one too large for this machine's memory is one sentence."""
    try:
        return np.empty((size, *shape), dtype=np.float32)
    except MemoryError:
        gib = size * int(np.prod(shape)) * 4 / 2**30
        raise RtkError(f"a batch of {size} images of {'×'.join(map(str, shape))} needs {gib:,.1f} GiB, more than this machine can give; lower --batch-size") from None


def engine_batch_size(engine: "Engine", asked: int | None) -> int:
    """Images per engine call: ``asked``, or 32 capped at the engine's maximum; too large is an error."""
    hi = engine.max_batch
    if asked is None:
        return min(DEFAULT_BATCH_SIZE, hi) if hi is not None else DEFAULT_BATCH_SIZE
    if hi is not None and asked > hi:
        raise RtkError(f"--batch-size {asked} is larger than the {engine.name} engine accepts (at most {hi})")
    return asked


def top_k_probs(logits: np.ndarray, k: int) -> list[tuple[tuple[int, float], ...]]:
    """Softmax probabilities of the ``k`` most probable classes per row."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [tuple((int(i), float(p[i])) for i in idx) for p, idx in zip(probs, order)]


def evaluate_predictions(
    predictions: Sequence[Prediction], spec: ModelSpec, data_classes: Sequence[str] | None
) -> tuple["ClassificationReport | None", list[str]]:
    """Accuracy and confusion matrix over the images in class folders that are the model's classes.

    Classes are matched as every command matches them (:func:`toolkit.core.image_sets.match_classes`):
    by name, or by folder order for a model without class names. Images in a folder that is not
    one of the model's classes are classified and listed, not scored.

    Returns:
        The report (``None`` when no image can be scored) and notes: what was assumed, and why
        images were left unscored.
    """
    if data_classes is None:
        return None, []
    match = match_classes(spec, data_classes)
    index = {name: m for name, m in zip(data_classes, match.mapping or ()) if m >= 0}
    scored = [p for p in predictions if p.label in index and p.error is None]
    notes = [match.assumed] if match.assumed else []
    unscored = sum(1 for p in predictions if p.label is not None and p.label not in index)
    if unscored:
        notes.append(f"{unscored} image{'s' if unscored != 1 else ''} in class folders not scored: {match.reason}")
    if not scored:
        return None, notes
    names = tuple(spec.class_name(i) for i in range(spec.num_classes))
    return ClassificationReport.from_predictions([index[p.label] for p in scored], [p.top1 for p in scored], names), notes


# ----------------------------------------------------------------------------- output


def format_predictions(result: PredictResult, fmt: str) -> str:
    """The result as text in one of :data:`FORMATS`.

    - ``json``: one object, :meth:`PredictResult.summary` plus ``"predictions"``: a list of rows.
    - ``jsonl``: one row object per line.
    - ``csv``: a header of :data:`CSV_FIELDS`, one row per file; ``top_k`` is a JSON list.

    A row has ``path``, ``label`` (the class folder, or null), ``top1``, ``top1_index``,
    ``top1_prob``, ``top_k`` (a list of ``{"class", "index", "prob"}``) and ``error`` (null, or
    why the file was skipped; the prediction fields are null then).
    """
    rows = [result.row(p) for p in result.predictions]
    if fmt == "json":
        return json_text({**result.summary(), "predictions": rows})
    if fmt == "jsonl":
        return "".join(json_text(r, indent=None) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "top_k": json_text(r["top_k"], indent=None)})
        return buf.getvalue()
    raise RtkError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
