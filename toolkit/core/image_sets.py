"""Real images with or without labels: what int8 calibration, the export check and the per-layer
comparison run on.

Calibration needs no labels, and neither does comparing one runtime with another, so any of
these will do as ``DATA``:

- a dataset rtk reads (:func:`toolkit.core.data.resolve_data`): ``digits``, a torchvision name, or a
  folder of class folders (``ROOT/<class>/…``, ``ROOT/train|val[|test]/<class>/…``); its images
  are labelled, and the labels count when they are the model's classes;
- any folder with image files in it, searched recursively (``photos/``, ``photos/2024/…``);
- a file list: a text file with one image path per line (relative to the list's folder; blank
  lines and lines starting with ``#`` are skipped).

:func:`calibration_pool` gives the images to calibrate on and, apart from them, the held-out
images that judge the result, so an image that set a range never grades it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from toolkit.core.console import warn
from toolkit.core.data import Split, resolve_data
from toolkit.core.errors import RtkError
from toolkit.core.images import find_images, is_image_path, load_image
from toolkit.core.spec import ModelSpec, Preprocess
from toolkit.core.transforms import image_to_array

#: The share of a flat collection (folder or list) held out of calibration to judge the result.
HELD_OUT_FRACTION = 0.2
#: Fewer judged images than this and a top-1 agreement says little (one image is a whole point or more).
FEW_JUDGED = 100


@dataclass(frozen=True)
class ImageSet:
    """Raw images and, when known, their classes.

    Attributes:
        split: the images (``split.image(i)``) and labels (``-1`` where unlabelled).
        class_names: the classes the labels index, or ``None`` for unlabelled images.
        description: where they come from, for messages (``photos/ (folder, 35 images)``).
        paths: the files behind the images, when they are files.
    """

    split: Split
    class_names: tuple[str, ...] | None
    description: str
    paths: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.split)

    def subset(self, indices: Sequence[int], description: str) -> "ImageSet":
        picked = [int(i) for i in indices]
        paths = tuple(self.paths[i] for i in picked) if self.paths else ()
        return ImageSet(self.split.subset(picked), self.class_names, description, paths)


@dataclass(frozen=True)
class PreparedImages:
    """Images prepared like the model's inputs, with labels in the model's class order when they have them.

    Attributes:
        images: (N, C, H, W) float32.
        labels: (N,) class indices of the model, or ``None`` when unlabelled or of other classes.
        source: what they are (``digits (test), 360 images``).
        unlabelled_reason: why no accuracy can be measured on them, when ``labels`` is ``None``.
        paths: the files they were read from, when they are files.
    """

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    unlabelled_reason: str | None = None
    paths: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.images)


def image_files(data: str | os.PathLike) -> list[Path] | None:
    """The image files of a file list or of a folder holding image files (recursively); ``None``
    when ``data`` is a dataset rtk reads with labels (a name, or a folder of class folders only).

    Raises:
        RtkError: a file list that cannot be read, or that names no image.
    """
    path = Path(data)
    if path.is_file():
        return _read_list(path)
    if not path.is_dir() or (path / "train").is_dir():
        return None
    if find_images(path):  # images at the top: a collection, whatever its sub-folders are called
        return find_images(path, recursive=True)
    subfolders = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not subfolders:
        raise RtkError(f"{path} holds no images (jpg, png, bmp, gif, tif, webp)")
    return None


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RtkError(f"{path} is neither a folder nor a text file listing images, one path per line") from None
    except OSError as exc:
        raise RtkError(f"cannot read {path}: {exc.strerror or exc}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise RtkError(f"{path} lists no images; give one image path per line")
    not_images = [entry for entry in entries if not is_image_path(entry)]
    if not_images:
        raise RtkError(f"{path} lists {not_images[0]}, which is not an image by its suffix; list image files only, one per line")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def _file_set(files: list[Path], description: str) -> ImageSet:
    split = Split(lambda i: load_image(files[i]), np.full(len(files), -1, dtype=np.int64), lambda i: str(files[i]))
    return ImageSet(split, None, description, tuple(files))


def calibration_pool(data: str | os.PathLike, input_size: int, samples: int, seed: int = 0) -> tuple[ImageSet, ImageSet | None]:
    """The images calibration draws from, and the held-out images that judge its result.

    A dataset gives its training split to calibrate (its validation split where it has none) and
    its test split (else validation) to judge. A folder of images or a file list is split, seeded:
    a fifth is held out, more when the collection has more images than ``samples`` calibrate on.

    Args:
        data: a dataset name, a folder (of images or of class folders), or a file list.
        input_size: the model's input side (a dataset's images are prepared for it).
        samples: how many images calibration is asked to take.
        seed: the draw of the held-out images of a collection.

    Returns:
        ``(pool, held_out)``; ``held_out`` is ``None`` when nothing can be held out.

    Raises:
        RtkError: the data cannot be found or read, or holds fewer than two images.
    """
    files = image_files(data)
    if files is None:
        source = resolve_data(data, input_size=input_size)
        train = "train" if source.has("train") else "val"
        judge = "test" if source.has("test") else ("val" if train == "train" else None)
        pool = ImageSet(source.splits[train], source.class_names, f"{source.name} ({train})")
        held = ImageSet(source.splits[judge], source.class_names, f"{source.name} ({judge})") if judge else None
        return pool, held
    kind = "file list" if Path(data).is_file() else "folder"
    if len(files) < 2:
        raise RtkError(f"{data} holds {len(files)} image; calibrating and judging an int8 file needs at least two")
    order = np.random.default_rng(seed).permutation(len(files))
    held = min(len(files) - 1, max(math.ceil(len(files) * HELD_OUT_FRACTION), len(files) - samples))
    everything = _file_set(files, f"{data} ({kind})")
    return (
        everything.subset(np.sort(order[held:]), f"{data} ({kind})"),
        everything.subset(np.sort(order[:held]), f"{data} ({kind}, held out)"),
    )


def calibration_draw(pool: ImageSet, samples: int, seed: int = 0) -> ImageSet:
    """The ``samples`` images (seeded) calibration takes from ``pool``, in pool order.

    A seeded draw over the whole pool, not its first images: a folder lists one class after
    another, and ranges calibrated on one class clip the others.
    """
    count = min(samples, len(pool))
    picked = np.sort(np.random.default_rng(seed).choice(len(pool), count, replace=False))
    return pool.subset(picked, pool.description)


def judged_set(data: str | os.PathLike, input_size: int) -> ImageSet:
    """The images a check or comparison runs on: a dataset's test split (else validation), or
    every image of a folder or file list.

    Raises:
        RtkError: the data cannot be found or read.
    """
    files = image_files(data)
    if files is not None:
        return _file_set(files, f"{data} ({'file list' if Path(data).is_file() else 'folder'})")
    source = resolve_data(data, input_size=input_size)
    split = "test" if source.has("test") else "val"
    return ImageSet(source.splits[split], source.class_names, f"{source.name} ({split})")


def prepare_images(
    images: ImageSet, spec: "ModelSpec", preprocess: "Preprocess", limit: int | None = None, exclude: Sequence[Path] = (),
) -> PreparedImages:
    """Decode and prepare images like the model's inputs; labels mapped onto the model's classes.

    Unreadable files are skipped with a warning, so the count is of real images.

    Args:
        images: the set to prepare.
        spec: the model (its classes decide whether the labels count).
        preprocess: the model's preprocessing, the pipeline ``rtk predict`` runs.
        limit: at most this many images (the first ones).
        exclude: files to leave out (the calibration images, when a check's data overlaps them).

    Raises:
        RtkError: no image could be read.
    """

    skip = {os.path.realpath(p) for p in exclude}
    arrays, labels, paths = [], [], []
    for i in range(len(images)):
        if limit is not None and len(arrays) >= limit:
            break
        path = images.paths[i] if images.paths else None
        if path is not None and os.path.realpath(path) in skip:
            continue
        try:
            arrays.append(image_to_array(images.split.image(i), preprocess))
        except RtkError as exc:
            warn(f"skipping {images.split.names(i)}: {exc}")
            continue
        labels.append(int(images.split.labels[i]))
        paths += [path] if path is not None else []
    if not arrays:
        raise RtkError(f"no image of {images.description} could be read")
    mapped, reason = model_labels(spec, images.class_names, np.asarray(labels, dtype=np.int64))
    described = f"{images.description}, {len(arrays)} images"
    return PreparedImages(np.ascontiguousarray(np.stack(arrays), dtype=np.float32), mapped, described, reason, tuple(paths))


def model_labels(spec: "ModelSpec", class_names: Sequence[str] | None, labels: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Labels in the model's class order, or ``None`` and the reason they cannot count.

    Classes are matched by name when both sides have names, else by index when the counts agree.
    """
    if class_names is None:
        return None, "the images are not labelled"
    if len(class_names) != spec.num_classes:
        return None, f"the data has {len(class_names)} classes and the model {spec.num_classes}"
    if spec.class_names and tuple(spec.class_names) != tuple(class_names):
        if set(spec.class_names) != set(class_names):
            return None, "the data's classes are not the model's"
        order = {name: i for i, name in enumerate(spec.class_names)}
        labels = np.asarray([order[class_names[int(label)]] for label in labels], dtype=np.int64)
    return labels, None


def few_judged_warning(count: int, what: str) -> str | None:
    """One line when ``count`` judged images are too few for a top-1 agreement to mean much, else ``None``."""
    if count >= FEW_JUDGED:
        return None
    return (
        f"only {count} image{'s' if count != 1 else ''} judged {what}: one image is {100 / max(count, 1):.1f} points of top-1 "
        f"agreement, too coarse to mean much; give data with at least {FEW_JUDGED} images to hold out"
    )
