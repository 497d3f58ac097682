"""Datasets for training and evaluation, behind one interface: :func:`resolve_data`.

Three kinds of source give the same :class:`DataSource` (class names, a default
:class:`~toolkit.core.spec.Preprocess`, and train/val[/test] splits of raw images):

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8×8 images), split
  70/10/20 with a fixed seed, so its test set is the same in every run; 8×8 by default,
  upsampled with ``input_size``.
- an image folder, read as every command reads one (:func:`toolkit.core.folders.read_folder`):
  ``root/train/<class>/…`` + ``root/val/<class>/…`` (+ optional ``test/``), or a flat
  ``root/<class>/…``, whole (split ``all``) and, for training, split reproducibly by
  ``val_split`` and ``seed``.
- torchvision's built-ins by name (:data:`BUILTINS`), read from ``data_root``.

Every split yields PIL images that are prepared by :func:`toolkit.core.transforms.image_to_array`
with a ``Preprocess``, the very function ``rtk predict`` uses: what the network sees in
training is what it sees on a user's image file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from toolkit.core.console import warn
from toolkit.core.errors import RtkError, first_line
from toolkit.core.folders import ImageFolder, read_folder
from toolkit.core.images import load_image
from toolkit.core.spec import Preprocess
from toolkit.core.transforms import image_to_array
from toolkit.core.validation import COUNT, PART, SEED

if TYPE_CHECKING:
    import torch
    from PIL import Image

DIGITS = "digits"
DEFAULT_DATA_ROOT = Path("data")


@dataclass(frozen=True)
class BuiltinInfo:
    """How to read one of torchvision's datasets.

    Attributes:
        cls: the torchvision.datasets class name.
        size: native image side in pixels.
        channels: ``"gray"`` or ``"rgb"``.
        mean, std: per-channel statistics of the training set.
        flip: horizontal flips are label-preserving (not for digits or characters).
        split_arg: ``"train"`` (``train=True/False``) or ``"split"`` (``split="train"/"test"``).
        where: where torchvision looks for the files under the data root.
    """

    cls: str
    size: int
    channels: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    split_arg: str
    where: str


BUILTINS: dict[str, BuiltinInfo] = {
    "mnist": BuiltinInfo("MNIST", 28, "gray", (0.1307,), (0.3081,), False, "train", "MNIST/raw"),
    "kmnist": BuiltinInfo("KMNIST", 28, "gray", (0.1918,), (0.3483,), False, "train", "KMNIST/raw"),
    "fashionmnist": BuiltinInfo("FashionMNIST", 28, "gray", (0.2860,), (0.3530,), True, "train", "FashionMNIST/raw"),
    "cifar10": BuiltinInfo(
        "CIFAR10", 32, "rgb", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, "train", "cifar-10-batches-py"
    ),
    "svhn": BuiltinInfo(
        "SVHN", 32, "rgb", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False, "split", "train_32x32.mat, test_32x32.mat"
    ),
    "stl10": BuiltinInfo(
        "STL10", 96, "rgb", (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True, "split", "stl10_binary"
    ),
}

#: Digits: the network input side by default. The images are 8×8, and at 8 px resnet18 reaches
#: over 99% test accuracy in 8 epochs; 16 px costs 2.4× the compute per step for nothing on a CPU.
#: ``--input-size`` upsamples (bilinear) for larger inputs.
DIGITS_INPUT_SIZE = 8
# Pixel statistics of the digits (ink 0..16 scaled to 0..1).
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3759,)
# Fractions of the 1,797 digits held out; the seed is fixed so the test set never changes.
DIGITS_TEST, DIGITS_VAL, DIGITS_SPLIT_SEED = 0.2, 0.1, 0


@dataclass(frozen=True)
class Split:
    """Raw images of one split: ``image(i)`` decodes image ``i``; ``labels[i]`` is its class."""

    image: Callable[[int], "Image.Image"]
    labels: np.ndarray
    names: Callable[[int], str] = str  # how to name image i in a warning
    in_memory: bool = False  # small and already decoded: prepare everything once, up front
    files: tuple[Path, ...] | None = None  # image i is files[i], when the split reads image files

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "Split":
        idx = np.asarray(indices, dtype=np.int64)
        files = None if self.files is None else tuple(self.files[i] for i in idx)
        return replace(
            self, image=lambda i: self.image(int(idx[i])), labels=self.labels[idx], names=lambda i: self.names(int(idx[i])), files=files
        )


@dataclass(frozen=True)
class DataSource:
    """A dataset's class names, its default input pipeline, and its raw splits.

    Attributes:
        name: ``digits``, a built-in name, or the folder path.
        class_names: one name per label.
        preprocess: the default input pipeline for this data (what training uses).
        splits: ``train``, ``val`` and possibly ``test``.
        flip: whether horizontal flips keep the label (used by training augmentation).
        whole: every image, for a folder of class folders with no split of its own (split ``all``):
            what an evaluation or a check judges, since the split exists for training.
        unavailable: why a split is missing (a folder too small to hold images out for validation).
    """

    name: str
    class_names: tuple[str, ...]
    preprocess: Preprocess
    splits: dict[str, Split] = field(default_factory=dict)
    flip: bool = True
    whole: Split | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def has(self, split: str) -> bool:
        return split in self.splits or (split == "all" and self.whole is not None)

    @property
    def judged_split(self) -> str:
        """What an evaluation or a check judges by default: the test split, else the whole folder, else val."""
        return "test" if self.has("test") else ("all" if self.whole is not None else "val")

    def split(self, name: str) -> Split:
        """One split's raw images: ``train``, ``val``, ``test`` or ``all`` (a folder of class folders, whole).

        Raises:
            RtkError: the data has no such split, with the reason when it is known.
        """
        if name == "all" and self.whole is not None:
            return self.whole
        if name not in self.splits:
            if name in self.unavailable:
                raise RtkError(self.unavailable[name])
            raise RtkError(f"{self.name} has no {name} split; it has {', '.join(self.splits) + (', all' if self.whole else '')}")
        return self.splits[name]

    def dataset(self, split: str, preprocess: Preprocess | None = None, augment: bool = False) -> "PreparedDataset":
        """One split as a map-style dataset of ``(CHW float32 tensor, label)`` pairs.

        Args:
            split: ``train``, ``val`` or ``test``.
            preprocess: how to prepare each image; the source's default when omitted
                (evaluation passes the artefact's own).
            augment: random shifts (and flips where they keep the label), for training only.
        """
        data = self.split(split)
        pre = preprocess or self.preprocess
        aug = Augment(shift=max(1, min(pre.input_size) // 8), flip=self.flip) if augment else None
        return PreparedDataset(data, pre, aug)

    def limited(self, max_samples: int | None) -> "DataSource":
        """The same source with each split cut to its first ``max_samples`` images (quick trials)."""
        if not max_samples:
            return self
        cut = lambda s: s.subset(range(min(len(s), max_samples)))  # noqa: E731
        return replace(self, splits={k: cut(s) for k, s in self.splits.items()}, whole=cut(self.whole) if self.whole is not None else None)


@dataclass(frozen=True)
class Augment:
    """Light training augmentation on a prepared CHW tensor: a random shift of up to ``shift``
    pixels (edges replicated) and, when ``flip``, a random horizontal flip."""

    shift: int
    flip: bool

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        _, h, w = x.shape
        s = self.shift
        padded = F.pad(x[None], (s, s, s, s), mode="replicate")[0]
        top, left = (int(v) for v in torch.randint(0, 2 * s + 1, (2,)))
        x = padded[:, top : top + h, left : left + w]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x.contiguous()


class PreparedDataset:
    """Images of a :class:`Split` prepared with a :class:`Preprocess` (and optionally augmented).

    Small in-memory splits are prepared once up front; image files are decoded when read. A
    file that fails to decode is reported once and replaced by the next good image, so one bad
    file does not stop a long training run.
    """

    def __init__(self, split: Split, preprocess: Preprocess, augment: Augment | None = None):
        self.split = split
        self.preprocess = preprocess
        self.augment = augment
        self.labels = split.labels
        self._bad: set[int] = set()
        self._arrays = np.stack([self._prepare(i) for i in range(len(split))]) if split.in_memory and len(split) else None

    def __len__(self) -> int:
        return len(self.split)

    def _prepare(self, i: int) -> np.ndarray:
        return image_to_array(self.split.image(i), self.preprocess)

    def __getitem__(self, i: int) -> tuple["torch.Tensor", int]:
        import torch

        i = int(i)
        x = torch.from_numpy(self._arrays[i] if self._arrays is not None else self._load(i))
        if self.augment is not None:
            x = self.augment(x)
        return x, int(self.labels[i])

    def _load(self, i: int) -> np.ndarray:
        n = len(self)
        for j in (i + k for k in range(n)):
            j %= n
            if j in self._bad:
                continue
            try:
                return self._prepare(j)
            except RtkError as exc:
                self._bad.add(j)
                warn(f"skipping {self.split.names(j)}: {exc}")
        raise RtkError("no image of this dataset could be read")

    def arrays(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The prepared inputs (N, C, H, W) and labels, without augmentation: all, or the first ``limit``
        (only those are decoded)."""
        n = len(self) if limit is None else min(limit, len(self))
        inputs = self._arrays[:n] if self._arrays is not None else np.stack([self._load(i) for i in range(n)])
        return inputs, np.asarray(self.labels)[:n]


def resolve_data(
    name: str | os.PathLike,
    *,
    input_size: int | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    max_samples: int | None = None,
) -> DataSource:
    """Find a dataset by name or path.

    Args:
        name: ``digits``, one of :data:`BUILTINS`, or an image folder.
        input_size: side of the network input; the source's own default when omitted.
        val_split: fraction held out for validation where the data has no validation split.
        seed: seed of that hold-out split (``digits`` keeps its fixed split).
        data_root: where torchvision's built-ins live (default ``./data``).
        download: let torchvision download a missing built-in.
        max_samples: cut every split to its first N images (quick trials, tests).

    Returns:
        The data source, with class names and its default :class:`Preprocess`.

    Raises:
        UsageError: ``val_split``, ``max_samples``, ``input_size`` or ``seed`` outside its rule.
        RtkError: unknown name, missing or empty folder, class folder without images, a built-in
            that is not on disk (or cannot be downloaded).
    """
    PART.check(val_split, "--val-split")
    COUNT.check(max_samples, "--max-samples")
    COUNT.check(input_size, "--input-size")
    SEED.check(seed, "--seed")
    key = str(name).lower()
    if key == DIGITS:
        source = _digits(input_size)
    elif key in BUILTINS:
        source = _builtin(key, input_size, val_split, seed, Path(data_root or DEFAULT_DATA_ROOT), download)
    elif Path(name).exists():
        source = _folder(Path(name), input_size, val_split, seed)
    else:
        known = ", ".join((DIGITS, *BUILTINS))
        raise RtkError(f"unknown dataset {str(name)!r}: not an existing folder nor one of {known}")
    return source.limited(max_samples)


# --- digits -------------------------------------------------------------------------------


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as 8-bit grayscale images (N, 8, 8), white ink on black, and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed, stratified train/val/test indices of the digits (70/10/20)."""
    from sklearn.model_selection import train_test_split

    _, labels = digits_images()
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=DIGITS_TEST, stratify=labels, random_state=DIGITS_SPLIT_SEED)
    val_fraction = DIGITS_VAL / (1.0 - DIGITS_TEST)
    train, val = train_test_split(rest, test_size=val_fraction, stratify=labels[rest], random_state=DIGITS_SPLIT_SEED)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _digits(input_size: int | None) -> DataSource:
    from PIL import Image

    images, labels = digits_images()
    size = input_size or DIGITS_INPUT_SIZE
    # Resizing the 8×8 image is part of the preprocess, so a user's 8×8 PNG of a digit goes
    # through exactly what training saw; a larger drawing is scaled to the same size.
    pre = Preprocess(
        input_size=(size, size), resize=size, crop=False, mean=DIGITS_MEAN, std=DIGITS_STD, interpolation="bilinear", channels="gray"
    )

    def split(idx: np.ndarray) -> Split:
        return Split(lambda i: Image.fromarray(images[idx[i]], "L"), labels[idx], lambda i: f"digit #{idx[i]}", in_memory=True)

    splits = {k: split(v) for k, v in digits_split_indices().items()}
    return DataSource(DIGITS, tuple(str(d) for d in range(10)), pre, splits, flip=False)


def write_digit_images(
    folder: str | os.PathLike, split: str = "test", per_class: int | None = None, classes: Sequence[int | str] | None = None
) -> list[Path]:
    """Save digits of one split as 8×8 PNG files under ``folder/<class>/`` (for trying ``rtk predict``).

    Args:
        folder: destination; ``folder/<digit>/digit-<index>.png`` files are written.
        split: ``train``, ``val`` or ``test`` of the fixed digits split.
        per_class: at most this many images per class (all when omitted).
        classes: only these digits (all ten when omitted).

    Returns:
        The paths written.
    """
    from PIL import Image

    images, labels = digits_images()
    wanted = None if classes is None else {int(c) for c in classes}
    written: list[Path] = []
    counts: dict[int, int] = {}
    for i in digits_split_indices()[split]:
        label = int(labels[i])
        if (wanted is not None and label not in wanted) or (per_class is not None and counts.get(label, 0) >= per_class):
            continue
        counts[label] = counts.get(label, 0) + 1
        path = Path(folder) / str(label) / f"digit-{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], "L").save(path)
        written.append(path)
    return written


# --- image folders ------------------------------------------------------------------------


def _folder(root: Path, input_size: int | None, val_split: float, seed: int) -> DataSource:
    folder = read_folder(root)
    if folder.layout == "images":
        raise RtkError(
            f"{root} holds images but no class folders; expected {root}/<class>/<images> "
            f"(or {root}/train/<class>/… and {root}/val/<class>/…): training and evaluation need labelled images"
        )
    pre = Preprocess.imagenet(input_size or 224)
    classes = folder.class_names or ()
    if folder.layout == "splits":
        splits = {name: _labelled_split(folder, name) for name in folder.splits}
        if "val" not in splits:
            splits["train"], splits["val"] = _hold_out(splits["train"], val_split, seed, root / "train")
        return DataSource(str(root), classes, pre, splits, flip=True)
    everything = _labelled_split(folder, None)
    try:
        splits = dict(zip(("train", "val"), _hold_out(everything, val_split, seed, root)))
        unavailable = {}
    except RtkError as exc:  # too few images to hold any out: only training needs the split
        splits, unavailable = {}, {"train": str(exc), "val": str(exc)}
    return DataSource(str(root), classes, pre, splits, flip=True, whole=everything, unavailable=unavailable)


def _labelled_split(folder: ImageFolder, split: str | None) -> Split:
    """One split of a labelled folder (the whole folder for ``None``), its unreadable files left out with a warning."""
    files, labels = folder.part(split)
    good = set(_readable(list(files)))
    kept = [(f, lab) for f, lab in zip(files, labels) if f in good]
    present = {lab for _, lab in kept}
    names = folder.class_names or ()
    for label in range(len(names)):
        if label not in present:
            where = folder.root / split if split else folder.root
            raise RtkError(f"class folder {where / names[label]} holds no readable images; add some or remove the folder")
    return _file_split([f for f, _ in kept], np.asarray([lab for _, lab in kept], dtype=np.int64))


def _readable(paths: list[Path]) -> list[Path]:
    """The files Pillow can open and verify; each other file is skipped with a warning.

    ``verify`` checks the file structure without decoding pixels, so scanning stays fast; a
    file that still fails to decode later is skipped by :class:`PreparedDataset`.
    """
    from PIL import Image

    good = []
    for path in paths:
        try:
            if path.stat().st_size == 0:
                raise ValueError("empty file (0 bytes)")
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data; each is reported
            warn(f"skipping {path}: not a readable image ({first_line(exc, 120)})")
            continue
        good.append(path)
    return good


def _file_split(paths: list[Path], labels: np.ndarray) -> Split:
    return Split(lambda i: load_image(paths[i]), labels, lambda i: str(paths[i]), files=tuple(paths))


def _hold_out(split: Split, fraction: float, seed: int, where: Path) -> tuple[Split, Split]:
    """Split off ``fraction`` of each class (at least one image where a class has two or more)."""
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in np.unique(split.labels):
        idx = np.flatnonzero(split.labels == label)
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, math.ceil(len(idx) * fraction)) if fraction > 0 else 0
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    if not val_idx:
        raise RtkError(f"{where} leaves no images for validation; add a val/ folder or raise --val-split")
    return split.subset(sorted(train_idx)), split.subset(sorted(val_idx))


# --- torchvision built-ins ----------------------------------------------------------------


def _builtin(key: str, input_size: int | None, val_split: float, seed: int, root: Path, download: bool) -> DataSource:
    info = BUILTINS[key]
    size = input_size or info.size
    pre = Preprocess(
        input_size=(size, size), resize=size, crop=False, mean=info.mean, std=info.std, interpolation="bilinear", channels=info.channels
    )
    train = _open_builtin(key, info, root, download, train=True)
    test = _open_builtin(key, info, root, download, train=False)
    classes = tuple(getattr(train, "classes", None) or (str(i) for i in range(10)))
    train_split, test_split = _dataset_split(train, key), _dataset_split(test, key)
    splits = dict(zip(("train", "val"), _hold_out(train_split, val_split or 0.1, seed, root)))
    splits["test"] = test_split
    return DataSource(key, classes, pre, splits, flip=info.flip)


def _open_builtin(key: str, info: BuiltinInfo, root: Path, download: bool, train: bool) -> Any:
    import torchvision.datasets as tvd

    cls = getattr(tvd, info.cls)
    which = {"train": train} if info.split_arg == "train" else {"split": "train" if train else "test"}
    try:
        return cls(str(root), download=download, **which)
    except RuntimeError as exc:
        text = str(exc)
        if not download and ("not found" in text.lower() or "download=True" in text):
            raise RtkError(
                f"{key} is not in {root} (torchvision looks for {root}/{info.where}); "
                f"put the files there, point --data-root at them, or pass --download"
            ) from None
        # MNIST-style datasets try each mirror and wrap the network errors in one RuntimeError.
        if download and ("Error downloading" in text or "urlopen error" in text):
            raise _download_failed(key, info, root, text) from None
        raise RtkError(f"{key} could not be read from {root}: {first_line(text, 200)}") from None
    except OSError as exc:  # the others let urllib's URLError (an OSError) through
        raise _download_failed(key, info, root, str(exc) or type(exc).__name__) from None


def _download_failed(key: str, info: BuiltinInfo, root: Path, text: str) -> RtkError:
    """One sentence for a failed download: the network's reason, and where the files can go instead."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # "<urlopen error [Errno -2] Name or service not known>" says why; the rest lists mirrors.
    reason = next((line for line in lines if "urlopen error" in line or "Errno" in line), lines[0] if lines else "no reason given")
    reason = reason.removeprefix("<urlopen error ").removesuffix(">")[:160]
    return RtkError(
        f"{key} could not be downloaded (no network? {reason}); "
        f"copy the files to {root}/{info.where} instead, or point --data-root at a folder that has them"
    )


def _dataset_split(dataset: Any, key: str) -> Split:
    """A torchvision dataset as a :class:`Split` (labels read without decoding images)."""
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = getattr(dataset, "labels")
    labels = np.asarray(labels, dtype=np.int64)
    return Split(lambda i: dataset[i][0], labels, lambda i: f"{key} #{i}")
