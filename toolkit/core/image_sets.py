"""Real images with or without labels: what int8 calibration, the export check and the per-layer
comparison run on.

Calibration needs no labels, and neither does comparing one runtime with another, so any of
these will do as ``DATA``:

- a dataset rtk reads (:func:`toolkit.core.data.resolve_data`): ``digits`` or a torchvision name;
- a folder, read as every command reads one (:func:`toolkit.core.folders.read_folder`): class
  folders (``ROOT/<class>/…``, judged whole) or split ones (``ROOT/train|val[|test]/<class>/…``),
  labelled, or any folder with image files at its top, searched recursively, unlabelled;
- a file list: a text file with one image path per line (relative to the list's folder; blank
  lines and lines starting with ``#`` are skipped).

Labels count where the data's classes are the model's (:func:`match_classes`).

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
from toolkit.core.files import os_error
from toolkit.core.folders import ImageFolder, read_folder
from toolkit.core.images import is_image_path, load_image
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
        assumed: what matching the data's classes to the model's assumed (a model without class names).
    """

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    unlabelled_reason: str | None = None
    paths: tuple[Path, ...] = ()
    assumed: str | None = None

    def __len__(self) -> int:
        return len(self.images)


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RtkError(f"{path} is neither a folder nor a text file listing images, one path per line") from None
    except OSError as exc:
        raise os_error(exc, path, "read") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise RtkError(f"{path} lists no images; give one image path per line")
    not_images = [entry for entry in entries if not is_image_path(entry)]
    if not_images:
        raise RtkError(f"{path} lists {not_images[0]}, which is not an image by its suffix; list image files only, one per line")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def _file_set(files: Sequence[Path], description: str, labels: Sequence[int] | None = None, class_names: tuple[str, ...] | None = None) -> ImageSet:
    files = list(files)
    values = np.full(len(files), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    split = Split(lambda i: load_image(files[i]), values, lambda i: str(files[i]), files=tuple(files))
    return ImageSet(split, class_names if labels is not None else None, description, tuple(files))


def _folder_set(folder: ImageFolder, split: str | None) -> ImageSet:
    """One split of a folder (the whole folder for ``None``) as an image set, labelled where the folder is."""
    files, labels = folder.part(split)
    return _file_set(files, folder.describe(split), labels, folder.class_names)


def _collection(data: str | os.PathLike) -> "ImageFolder | list[Path] | None":
    """A file list's images, a folder as :func:`read_folder` reads it, or ``None`` for a dataset name."""
    path = Path(data)
    if path.is_file():
        return _read_list(path)
    if path.is_dir():
        return read_folder(path)
    return None


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
    found = _collection(data)
    if found is None:
        source = resolve_data(data, input_size=input_size)
        train = "train" if source.has("train") else "val"
        judge = "test" if source.has("test") else ("val" if train == "train" else None)
        pool = ImageSet(source.splits[train], source.class_names, f"{source.name} ({train})")
        held = ImageSet(source.splits[judge], source.class_names, f"{source.name} ({judge})") if judge else None
        return pool, held
    if isinstance(found, ImageFolder) and found.layout == "splits":  # calibrate on train, judge on test (else val)
        judge = found.judged_split
        return _folder_set(found, "train"), (_folder_set(found, judge) if judge else None)
    if isinstance(found, ImageFolder):
        everything, kind = _folder_set(found, None), found.describe()
    else:
        everything, kind = _file_set(found, f"{data} (file list)"), f"{data} (file list)"
    if len(everything) < 2:
        raise RtkError(f"{data} holds {len(everything)} image; calibrating and judging an int8 file needs at least two")
    order = np.random.default_rng(seed).permutation(len(everything))
    held = min(len(everything) - 1, max(math.ceil(len(everything) * HELD_OUT_FRACTION), len(everything) - samples))
    return (
        everything.subset(np.sort(order[held:]), kind),
        everything.subset(np.sort(order[:held]), kind[:-1] + ", held out)"),
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
    """The images a check or comparison runs on: a dataset's test split (else validation), a split
    folder's test split (else val), or every image of any other folder or of a file list.

    Raises:
        RtkError: the data cannot be found or read.
    """
    found = _collection(data)
    if isinstance(found, ImageFolder):
        return _folder_set(found, found.judged_split)
    if found is not None:
        return _file_set(found, f"{data} (file list)")
    source = resolve_data(data, input_size=input_size)
    split = source.judged_split
    return ImageSet(source.split(split), source.class_names, f"{source.name} ({split})")


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
    match = match_classes(spec, images.class_names)
    mapped = np.asarray(match.mapping, dtype=np.int64)[np.asarray(labels, dtype=np.int64)] if match.complete else None
    described = f"{images.description}, {len(arrays)} images"
    array = np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
    return PreparedImages(array, mapped, described, match.reason, tuple(paths), match.assumed if match.complete else None)


@dataclass(frozen=True)
class ClassMatch:
    """How a data set's classes map onto a model's.

    Attributes:
        mapping: for each class of the data, the model's index of it, or -1 where the model has no
            such class; ``None`` when nothing can be matched (unlabelled data, or counts that differ
            with no class names to go by).
        reason: why some or all images cannot be scored, or ``None``.
        assumed: what the mapping takes for granted (a model without class names), or ``None``.
    """

    mapping: tuple[int, ...] | None
    reason: str | None = None
    assumed: str | None = None

    @property
    def complete(self) -> bool:
        """Every class of the data is one of the model's: the accuracy over all images can be measured."""
        return self.mapping is not None and all(m >= 0 for m in self.mapping)


def match_classes(spec: "ModelSpec", class_names: Sequence[str] | None) -> ClassMatch:
    """Match the data's classes (folder names) to the model's: by name, or, for a model without
    names, by sorted folder order when the counts agree (torchvision's ``ImageFolder`` numbers
    classes so, and so did whatever trained the model on such folders); the assumption is said.
    """
    if class_names is None:
        return ClassMatch(None, "the images are not labelled")
    if spec.class_names:
        index = {name: i for i, name in enumerate(spec.class_names)}
        mapping = tuple(index.get(name, -1) for name in class_names)
        unknown = [name for name, m in zip(class_names, mapping) if m < 0]
        if not unknown:
            return ClassMatch(mapping)
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        known = f" (it knows {', '.join(spec.class_names[:10])}{' …' if spec.num_classes > 10 else ''})"
        return ClassMatch(mapping, f"the data has classes the model does not know: {shown}{known}")
    if len(class_names) != spec.num_classes:
        return ClassMatch(None, f"the data has {len(class_names)} classes and the model {spec.num_classes} outputs, and no class names to match them by")
    shown = ", ".join(class_names[:5]) + (" …" if len(class_names) > 5 else "")
    assumed = (
        f"the model has no class names, so the data's {len(class_names)} classes in sorted order ({shown}) are taken "
        f"as its classes 0–{spec.num_classes - 1}, as torchvision's ImageFolder numbers them; if it was trained otherwise, "
        "the accuracy is meaningless"
    )
    return ClassMatch(tuple(range(len(class_names))), assumed=assumed)


def few_judged_warning(count: int, what: str) -> str | None:
    """One line when ``count`` judged images are too few for a top-1 agreement to mean much, else ``None``."""
    if count >= FEW_JUDGED:
        return None
    return (
        f"only {count} image{'s' if count != 1 else ''} judged {what}: one image is {100 / max(count, 1):.1f} points of top-1 "
        f"agreement (or accuracy), too coarse to mean much; give at least {FEW_JUDGED} images"
    )
