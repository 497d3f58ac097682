"""``rtk predict --ray`` and ``rtk eval --ray``: batch inference on a Ray cluster, same answers as one process.

The data flows as Ray Data batch inference does it. The list of images (paths, or the raw pixels
of a dataset held in memory) becomes a dataset; CPU tasks decode and preprocess each block with
rtk's own code (:func:`toolkit.usecases.predict.prepare_image`, :func:`toolkit.core.transforms.image_to_array`),
so the network sees what a local run feeds it; an actor pool runs the batches, each actor (a
*replica*) holding one engine opened by :func:`toolkit.usecases.opening.open_engine`, and one GPU each for
a GPU engine. Ray Data streams blocks through the stages under its object-store budget, so
memory is bounded by the pipeline, not by the number of images. With CPU replicas, Ray Data's
optimiser fuses the two stages (both ask for one CPU): each replica decodes the blocks it runs,
and no decoded image crosses the object store; GPU replicas keep the decoding in CPU tasks.

Results are gathered on the driver, not written as parts by the workers: what comes back per
image is a few class indices and probabilities (tens of bytes, against the hundreds of KB of its
pixels, which never leave the workers), and every output rtk writes needs them all in path order
anyway: the JSON report opens with run totals and an evaluation, the table and confusion matrix
span every image. So the driver writes the one output file exactly as a local run does (to a
temporary name, renamed when complete), and an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engines.base import Engine
from engines.request import EngineRequest
from toolkit.core.console import ProgressBar, warn
from toolkit.core.data import DataSource, Split
from toolkit.core.errors import RtkError, first_line
from toolkit.core.metrics import ClassificationReport
from toolkit.core.ray_cluster import Cluster, RayOptions, connect, quiet_console, ray_module
from toolkit.core.spec import Preprocess
from toolkit.core.transforms import image_to_array
from toolkit.usecases.evaluate import EvalOptions, EvalResult, evaluate_artefact, evaluation_batch_size, label_mapping
from toolkit.usecases.opening import open_engine
from toolkit.usecases.predict import (
    Prediction,
    PredictOptions,
    PredictResult,
    collect_images,
    engine_batch_size,
    evaluate_predictions,
    prepare_image,
    top_k_probs,
)

#: The most blocks the list of images is cut into (see :func:`run_pipeline`).
MAX_INPUT_BLOCKS = 1000
#: Where Ray keeps the logs of its latest session (Ray Data's own: ray-data.log).
RAY_LOGS = "/tmp/ray/session_latest/logs"
# Ray colours parts of its messages for a terminal.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# An object-store URL (s3://, gs://, abfs://…), as a Path keeps it: one slash after the scheme.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def predict_on_ray(
    path: str | os.PathLike,
    engine: "Engine",
    request: EngineRequest,
    options: PredictOptions = PredictOptions(),
    ray_options: RayOptions = RayOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """:func:`toolkit.usecases.predict.predict` on a Ray cluster: the same files, rows, failures and evaluation.

    Args:
        path: a folder or an image file, at a path every node can read.
        engine: the engine opened on the driver from ``request``: its classes, preprocessing and
            batch limits drive the run (the replicas open their own).
        request: what each replica opens (the request the driver opened ``engine`` with).
        options: as for a local run, but ``workers``: Ray runs the decoding on the cluster's CPUs.
        ray_options: the cluster, and how many replicas.
        progress: called as ``progress(done, total)`` as results come back.

    Returns:
        The result a local run gives; ``seconds`` counts from the pipeline's start (the replicas'
        start-up included, Ray's own start not).

    Raises:
        RtkError: nothing to classify, a bad batch size, (with ``strict``) an unreadable file, or
            a failure on the cluster (its first line).
    """
    if _URL.match(str(path)):  # Path("s3://bucket/x") is "s3:/bucket/x", which would "not exist"
        raise RtkError(
            f"{path} is not a folder: rtk reads images through the file system, so mount the bucket as a folder "
            "(Mountpoint for Amazon S3, gcsfuse, blobfuse2) at the same path on every node and give that path"
        )
    class_names = tuple(engine.spec.class_name(i) for i in range(engine.spec.num_classes))
    inputs = collect_images(path, options.recursive)
    files, labels = inputs.files, inputs.labels
    batch_size = engine_batch_size(engine, options.batch_size)
    top_k = min(options.top_k, engine.spec.num_classes)
    rows = [{"index": i, "path": os.path.abspath(f)} for i, f in enumerate(files)]
    results: list[Prediction | None] = [None] * len(files)
    done = 0
    with connect(ray_options.address) as cluster:
        start = time.perf_counter()
        for out in run_pipeline(rows, engine, request, batch_size, top_k, ray_options, cluster):
            for index, error, classes, probs in zip(out["index"], out["error"], out["top_index"], out["top_prob"]):
                index = int(index)
                if error and options.strict:
                    raise RtkError(f"{files[index]}: {error} (--strict stops at the first unreadable file)")
                top = () if error else tuple((int(c), float(p)) for c, p in zip(classes, probs))
                results[index] = Prediction(files[index], labels[index], top, error or None)
            done += len(out["index"])
            if progress:
                progress(done, len(files))
        seconds = time.perf_counter() - start
    predictions = _complete(results)
    evaluation, notes = evaluate_predictions(predictions, engine.spec, inputs.class_names)
    return PredictResult(inputs.root, predictions, class_names, engine.name, engine.device, seconds, evaluation, inputs.ignored, notes)


def evaluate_on_ray(options: EvalOptions, ray_options: RayOptions = RayOptions()) -> EvalResult:
    """:func:`toolkit.usecases.evaluate.evaluate_artefact` with the scoring on a Ray cluster: the same report.

    Args:
        options: as for a local run.
        ray_options: the cluster, and how many replicas.

    Raises:
        RtkError: what a local run raises, or a failure on the cluster (its first line).
    """
    request = EngineRequest.of(
        options.model, options.engine, device=options.device, checkpoint_options=options.checkpoint_options, meta=options.meta,
    )
    score = partial(score_on_ray, request=request, batch_size=options.batch_size, ray_options=ray_options, progress=options.progress)
    return evaluate_artefact(options, score=score)


def score_on_ray(
    engine: "Engine", source: DataSource, split: str, *, request: EngineRequest, batch_size: int, ray_options: RayOptions, progress: bool
) -> "ClassificationReport":
    """Score one split on Ray as :func:`toolkit.usecases.evaluate.evaluate` scores it here (a :data:`~toolkit.usecases.evaluate.Scorer`).

    An image file that passed the folder scan but fails to decode is named on stderr and, as the
    local data loader does, the next readable image of the split stands in for it (with its own
    label kept), so the figures match a local run exactly.
    """

    data = source.split(split)
    n = len(data)
    batch_size = evaluation_batch_size(n, batch_size, engine)
    mapping = label_mapping(source.class_names, engine.spec)
    rows = _split_rows(data)
    predictions = np.full(n, -1, dtype=np.int64)
    failed: dict[int, str] = {}
    with connect(ray_options.address) as cluster, ProgressBar(n, "evaluating", progress) as bar:
        for out in run_pipeline(rows, engine, request, batch_size, None, ray_options, cluster):
            for index, error, classes in zip(out["index"], out["error"], out["top_index"]):
                if error:
                    failed[int(index)] = error
                predictions[int(index)] = classes[0]
            bar.advance(len(out["index"]))
    for index in sorted(failed):
        warn(f"skipping {data.names(index)}: {failed[index]}")
    predictions = _stand_ins(predictions, set(failed))
    names = [engine.spec.class_name(i) for i in range(engine.spec.num_classes)]
    return ClassificationReport.from_predictions(mapping[data.labels], predictions, names)


# ----------------------------------------------------------------------------- the pipeline


def run_pipeline(
    rows: list[dict[str, Any]],
    engine: "Engine",
    request: EngineRequest,
    batch_size: int,
    top_k: int | None,
    ray_options: RayOptions,
    cluster: Cluster,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode ``rows`` in CPU tasks and classify them in a pool of replicas; yield results as they come.

    Args:
        rows: ``{"index", "path"}`` (an image file) or ``{"index", "pixels", "mode"}`` (an image in memory).
        engine: the engine opened on the driver (preprocessing, input shape, device).
        request: what each replica opens.
        batch_size: images per engine call.
        top_k: classes kept per image (softmax probabilities, as ``rtk predict``), or ``None`` for
            the argmax of the logits alone (as ``rtk eval``).
        ray_options: how many replicas.
        cluster: the connected cluster.

    Yields:
        Batches of ``index``, ``error`` (``""`` when decoded), ``top_index`` and ``top_prob``
        (N × k; -1 and 0 for an image that failed), in no particular order.

    Raises:
        RtkError: a replica could not open its engine, or the cluster failed (first line).
    """
    ray = ray_module()
    gpu = engine.device.startswith("cuda")
    # Many small input blocks spread the work evenly; each costs the driver an object-store put
    # (about 2 ms), so a long list is cut into at most MAX_INPUT_BLOCKS. A task decodes its block
    # one engine batch at a time, and Ray Data streams each batch on as it is done.
    blocks = min(MAX_INPUT_BLOCKS, max(1, math.ceil(len(rows) / batch_size)))
    replicas = min(cluster.replicas(ray_options.replicas, gpu), blocks)  # a replica without a block would only idle
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_block, fn_kwargs={"preprocess": engine.preprocess, "shape": tuple(engine.input_shape)},
        batch_size=batch_size, batch_format="numpy", num_cpus=1,
    )  # fmt: skip
    request = replace(request, path=Path(os.path.abspath(request.path)))  # workers start elsewhere
    ds = ds.map_batches(
        Replica,
        fn_constructor_kwargs={"request": request, "gpu": gpu, "top_k": top_k},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=1, num_gpus=1 if gpu else 0,
    )  # fmt: skip
    context = ds.context  # this run's copy: Ray's own progress bars and logs would interleave with rtk's
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.raise_original_map_exception = True  # an RtkError from a worker reaches the driver as itself
    with quiet_console():
        try:
            yield from ds.iter_batches(batch_size=None, batch_format="numpy")
        except ray.exceptions.RayError as exc:
            error = _cluster_error(exc, ray.exceptions.RayTaskError)
            if error is None:  # rtk's own code failed on a worker: a bug, which keeps its traceback
                raise
            raise error from None


def decode_block(batch: dict[str, np.ndarray], preprocess: Preprocess, shape: Sequence[int]) -> dict[str, np.ndarray]:
    """One block decoded and preprocessed (a Ray Data CPU task): ``index``, ``image``, ``error``.

    A file that cannot be read keeps its row, with a zero image and the reason; the replicas skip it.
    """
    from PIL import Image

    n = len(batch["index"])
    images = np.zeros((n, *shape), dtype=np.float32)
    errors = np.full(n, "", dtype=object)
    for row in range(n):
        if "path" in batch:
            array, error = prepare_image(Path(batch["path"][row]), preprocess)
        else:  # an image held in memory: rebuilt as the dataset hands it out, then prepared alike
            array, error = image_to_array(Image.fromarray(batch["pixels"][row], str(batch["mode"][row])), preprocess), None
        if error is not None:
            errors[row] = error
        else:
            images[row] = array
    return {"index": batch["index"], "image": images, "error": errors}


class Replica:
    """One engine in the actor pool: classifies the decoded rows of each batch it is given.

    Args:
        request: what to open.
        gpu: run on the GPU Ray gave this actor (it sees it as ``cuda:0``); else on one CPU thread.
        top_k: see :func:`run_pipeline`.
    """

    def __init__(self, request: EngineRequest, gpu: bool, top_k: int | None):
        self.top_k = top_k
        self.engine: "Engine | None" = None
        self.failure: RtkError | None = None
        try:
            # One CPU per replica, so one intra-op thread: Ray places replicas and decoding by that count.
            self.engine = open_engine(replace(request, device="cuda" if gpu else "cpu", threads=None if gpu else 1))
        except RtkError as exc:
            # Ray hands the driver only the text of an error raised while an actor starts (a traceback
            # in a sentence); raised from a call, the error itself arrives, so the driver can print it.
            self.failure = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.failure is not None:
            raise self.failure
        n = len(batch["index"])
        k = self.top_k or 1
        top_index = np.full((n, k), -1, dtype=np.int64)
        top_prob = np.zeros((n, k), dtype=np.float64)
        ok = np.flatnonzero(batch["error"] == "")
        if len(ok):
            images = np.ascontiguousarray(batch["image"][ok], dtype=np.float32)
            count = len(ok)
            if count < self.engine.min_batch:  # a static-shape engine: pad, then drop the padding's outputs
                images = np.concatenate([images, np.zeros((self.engine.min_batch - count, *images.shape[1:]), np.float32)])
            logits = self.engine(images)[:count]
            if self.top_k is None:
                top_index[ok, 0] = logits.argmax(axis=1)
            else:
                for row, pairs in zip(ok, top_k_probs(logits, k)):
                    top_index[row], top_prob[row] = [c for c, _ in pairs], [p for _, p in pairs]
        return {"index": batch["index"], "error": batch["error"], "top_index": top_index, "top_prob": top_prob}


# ----------------------------------------------------------------------------- helpers


def _split_rows(data: Split) -> list[dict[str, Any]]:
    """The rows of a split: its files' paths, or, for data held in memory (digits, torchvision's), its pixels."""
    if data.files is not None:
        return [{"index": i, "path": os.path.abspath(f)} for i, f in enumerate(data.files)]
    rows = []
    for i in range(len(data)):
        image = data.image(i)
        rows.append({"index": i, "pixels": np.asarray(image), "mode": image.mode})
    return rows


def _stand_ins(predictions: np.ndarray, failed: set[int]) -> np.ndarray:
    """Each failed image's prediction replaced by that of the next readable image (wrapping round),
    as :class:`toolkit.core.data.PreparedDataset` substitutes the image itself in a local run.

    Raises:
        RtkError: no image could be read.
    """
    if not failed:
        return predictions
    n = len(predictions)
    if len(failed) == n:
        raise RtkError("no image of this dataset could be read")
    out = predictions.copy()
    for index in failed:
        j = index
        while j in failed:
            j = (j + 1) % n
        out[index] = predictions[j]
    return out


def _complete(results: Sequence[Prediction | None]) -> list[Prediction]:
    missing = sum(r is None for r in results)
    if missing:  # every row comes back, failures included: a gap is a bug, not bad input
        raise RuntimeError(f"the Ray pipeline returned no result for {missing} of {len(results)} images")
    return list(results)  # type: ignore[arg-type]


def _cluster_error(exc: BaseException, task_error: type) -> RtkError | None:
    """One sentence for a failure on the cluster, or ``None`` for a bug in rtk's code on a worker.

    Args:
        exc: what Ray raised.
        task_error: ``ray.exceptions.RayTaskError``, which wraps an exception a task or actor raised.

    Returns:
        rtk's own message when a worker raised an :class:`RtkError`; the first line of Ray's message
        for a failure of the cluster itself (a worker or node lost, an object evicted); ``None`` when
        rtk's code raised anything else.
    """
    original = getattr(exc, "cause", None)  # what RayTaskError carries: the worker's exception itself
    if isinstance(original, RtkError):
        return RtkError(f"on the Ray cluster: {first_line(original, 400)}")
    if isinstance(exc, task_error):
        return None
    return RtkError(f"the Ray run failed: {first_line(_ANSI.sub('', str(exc)), 240)} (details: {RAY_LOGS} on the head node)")
