"""How every command reads a folder of images: one layout, one list of files, one set of labels.

``rtk train``, ``eval``, ``predict``, ``parity`` and ``export`` (its check and its ``--calib``)
all read a folder through :func:`read_folder`, so the same folder means the same images and the
same labels to each of them:

- ``splits``: ``ROOT/train/<class>/…`` with ``ROOT/val/<class>/…`` and/or ``ROOT/test/<class>/…``:
  labelled, and already split; a check or an evaluation takes its test split (else val).
- ``classes``: no image at the top and sub-folders that hold images, ``ROOT/<class>/…`` (torchvision's
  ``ImageFolder``): labelled by folder name, each class folder searched at any depth. Judged whole;
  only training splits it (``--val-split``).
- ``images``: image files at the top: unlabelled; sub-folders are searched too when ``recursive``.

Which files count as images is :func:`toolkit.core.images.scan_folder`'s rule (by suffix, hidden
files passed over); whether each one decodes is for the reader of the pixels to find out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.core.errors import RtkError
from toolkit.core.files import readable_folder
from toolkit.core.images import IMAGE_SUFFIXES, describe_ignored, scan_folder

#: The sub-folders that make a folder a split dataset, in the order a check prefers them.
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageFolder:
    """What :func:`read_folder` found.

    Attributes:
        root: the folder.
        layout: ``splits``, ``classes`` or ``images`` (see the module).
        files: every image file found, sorted (for ``splits``: the train files, then val, then test).
        labels: for each file, the index of its class in ``class_names``; ``None`` for ``images``.
        class_names: the class folders' names, sorted; ``None`` for ``images``.
        splits: for ``splits``, the indices into ``files`` of each split present.
        ignored: visible files passed over because their suffix is not an image suffix.
    """

    root: Path
    layout: str
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    splits: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ignored: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.files)

    @property
    def judged_split(self) -> str | None:
        """The split a check or an evaluation takes by default: test, else val; ``None`` = the whole folder."""
        return next((s for s in ("test", "val") if s in self.splits), None) if self.layout == "splits" else None

    def part(self, split: str | None) -> tuple[tuple[Path, ...], tuple[int, ...] | None]:
        """The files (and labels) of one split of a ``splits`` folder, or of the whole folder for ``None``."""
        if split is None:
            return self.files, self.labels
        if split not in self.splits:
            raise RtkError(f"{self.root} has no {split} split; it has {', '.join(self.splits) or 'none'}")
        picked = self.splits[split]
        labels = self.labels
        return tuple(self.files[i] for i in picked), (tuple(labels[i] for i in picked) if labels is not None else None)

    def describe(self, split: str | None = None) -> str:
        """What the folder (or one split of it) is, for messages: ``photos (5 class folders)``, ``photos (test)``."""
        if split is not None:
            return f"{self.root} ({split})"
        if self.layout == "classes":
            return f"{self.root} ({len(self.class_names or ())} class folders)"
        return f"{self.root} (folder)"


def read_folder(root: str | os.PathLike, recursive: bool = True) -> ImageFolder:
    """Read a folder of images the one way every command reads it (see the module).

    Args:
        root: the folder.
        recursive: for a folder with images at its top, also take the images of its sub-folders
            (``rtk predict`` without ``-r`` takes the top only). Class folders are always searched
            at any depth.

    Returns:
        The layout, the image files and, for class folders, their labels.

    Raises:
        RtkError: the folder does not exist, cannot be listed, or holds no image; a split's classes differ from
            the training split's; a class folder holds no image.
    """
    root = readable_folder(root)  # missing, not a folder, no permission, a symlink loop: one sentence each
    if (root / "train").is_dir():
        return _split_folder(root)
    top = scan_folder(root)
    if top.images:
        found = scan_folder(root, recursive) if recursive else top
        return ImageFolder(root, "images", tuple(found.images), ignored=tuple(found.ignored))
    subfolders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subfolders:
        raise _no_images(root, top.ignored, f", and no class folders ({root}/<class>/<images>)")
    classes, files, labels, ignored = _class_folders(root, subfolders)
    return ImageFolder(root, "classes", files, labels, classes, ignored=tuple(top.ignored) + ignored)


def _class_folders(
    root: Path, subfolders: list[Path], expected: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], tuple[Path, ...], tuple[int, ...], tuple[Path, ...]]:
    """Class names, files, labels and ignored files of ``root/<class>/…``; ``expected``: the training split's classes."""
    scans = {d.name: scan_folder(d, recursive=True) for d in subfolders}
    if not any(scan.images for scan in scans.values()):
        raise _no_images(root, [f for scan in scans.values() for f in scan.ignored])
    empty = [name for name, scan in scans.items() if not scan.images]
    if empty:
        raise RtkError(
            f"class folder {root / empty[0]} holds no images, beside class folders that do; add some or remove it "
            f"(every sub-folder of {root} is read as a class)"
        )
    classes = tuple(scans)
    if expected is not None and classes != expected:
        extra, missing = sorted(set(classes) - set(expected)), sorted(set(expected) - set(classes))
        detail = "; ".join(p for p in (f"extra {', '.join(extra)}" if extra else "", f"missing {', '.join(missing)}" if missing else "") if p)
        raise RtkError(f"{root} has other class folders than the training set: {detail}")
    files = tuple(f for scan in scans.values() for f in scan.images)
    labels = tuple(i for i, scan in enumerate(scans.values()) for _ in scan.images)
    return classes, files, labels, tuple(f for scan in scans.values() for f in scan.ignored)


def _split_folder(root: Path) -> ImageFolder:
    """``root/train|val|test/<class>/…``: one class list (the training split's), each split labelled by it."""
    classes: tuple[str, ...] | None = None
    files: list[Path] = []
    labels: list[int] = []
    splits: dict[str, tuple[int, ...]] = {}
    ignored: list[Path] = []
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        subfolders = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not subfolders:
            raise RtkError(f"{folder} holds no class folders; expected {folder}/<class>/<images>")
        classes, found, found_labels, skipped = _class_folders(folder, subfolders, classes)
        splits[split] = tuple(range(len(files), len(files) + len(found)))
        files += found
        labels += found_labels
        ignored += skipped
    return ImageFolder(root, "splits", tuple(files), tuple(labels), classes, splits, tuple(ignored))


def _no_images(root: Path, ignored, layout: str = "") -> RtkError:
    others = f"; {describe_ignored(list(ignored), root)}" if ignored else ""
    return RtkError(f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)} in any case){layout}{others}")
