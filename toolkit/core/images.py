"""Reading the image files people really have: any common format, any case of suffix, EXIF
orientation honoured, and a one-line reason for every file that cannot be read.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from toolkit.core.console import warn
from toolkit.core.errors import RtkError, first_line
from toolkit.core.files import not_regular, os_error, os_reason, readable_folder

if TYPE_CHECKING:
    from PIL import Image

#: File suffixes (lower case) treated as images; matching ignores case (``.JPG`` counts).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether a file name has one of :data:`IMAGE_SUFFIXES` (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class FolderScan:
    """What :func:`scan_folder` found.

    Attributes:
        images: files with an image suffix, sorted by path.
        ignored: visible files without an image suffix (``notes.txt``, ``photo.heic``), sorted;
            callers list them so that a format rtk does not read is never dropped unseen.
    """

    images: list[Path]
    ignored: list[Path]


def scan_folder(folder: str | os.PathLike, recursive: bool = False) -> FolderScan:
    """The image files in a folder, and the other files that were passed over.

    Hidden files and folders (names starting with ``.``) are skipped silently: ``.DS_Store`` and
    ``.git`` are the system's, not the user's. A file with an image suffix is an image here even
    when its content turns out not to be one, so that :func:`load_image` can report it.

    Args:
        folder: the folder to search.
        recursive: also search its subfolders, at any depth.

    Returns:
        Image paths and ignored paths, each in a stable (sorted) order.

    Raises:
        RtkError: the folder does not exist, is not a folder, or cannot be read (a subfolder that
            cannot be read is named in a warning and passed over).
    """
    folder = readable_folder(folder)
    images: list[Path] = []
    ignored: list[Path] = []

    def unreadable(exc: OSError) -> None:  # os.walk would pass over it silently
        warn(f"{os_error(exc, exc.filename, 'read')}; its files are passed over")

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        # Sorting in place fixes os.walk's order; pruning stops it entering hidden folders.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for f in files:
            if not f.startswith("."):
                (images if is_image_path(f) else ignored).append(Path(root) / f)
    return FolderScan(sorted(images), sorted(ignored))


def find_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files in a folder, sorted by path (:func:`scan_folder`'s ``images``)."""
    return scan_folder(folder, recursive).images


def describe_ignored(ignored: Sequence[Path], root: str | os.PathLike | None = None, shown: int = 3) -> str:
    """One line naming the files passed over for their suffix: a few names, then a count.

    Args:
        ignored: the ignored files.
        root: names are shown relative to this folder when given.
        shown: how many names to list before "and N more".
    """
    def name(p: Path) -> str:
        return p.relative_to(root).as_posix() if root is not None else p.name

    names = ", ".join(name(p) for p in ignored[:shown])
    more = f" and {len(ignored) - shown} more" if len(ignored) > shown else ""
    noun = "file that is not an image by its" if len(ignored) == 1 else "files that are not images by their"
    return f"ignored {len(ignored)} {noun} suffix: {names}{more}"


def load_image(path: str | os.PathLike) -> "Image.Image":
    """Decode an image file completely, upright and detached from the file.

    The first frame of an animation is used; the EXIF orientation tag is applied, so a photo
    taken with the camera on its side comes out as it is shown by a viewer. The pixel mode is
    left as stored (see :func:`toolkit.core.transforms.to_channels` for the conversion).

    Args:
        path: an image file.

    Returns:
        A loaded PIL image.

    Raises:
        RtkError: the file is missing, empty, not an image, truncated or corrupt; the message
            is the reason, without the path (callers add it).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise RtkError("file does not exist") from None
    except OSError as exc:
        raise RtkError(f"cannot read file ({os_reason(exc)})") from None
    special = not_regular(path)
    if special:  # a named pipe would block the reader, /dev/zero would never end
        raise RtkError(f"not a regular file ({special})")
    if size == 0:
        raise RtkError("empty file (0 bytes)")
    fmt = None
    _quiet_bomb_warning(Image)
    try:
        with Image.open(path) as img:
            fmt = img.format
            pixels = img.width * img.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                warn(
                    f"{path}: {img.width}×{img.height} = {pixels:,} pixels, above Pillow's decompression-bomb limit "
                    f"of {Image.MAX_IMAGE_PIXELS:,}; decoding it anyway"
                )
            img.load()  # decode now, so a truncated file fails here and not later in a worker
            image = ImageOps.exif_transpose(img) if _orientation(img) not in (None, 1) else img.copy()
    except UnidentifiedImageError:
        raise RtkError(f"not an image ({_content_hint(path)})") from None
    except Image.DecompressionBombError:
        raise RtkError(f"refused: more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, twice Pillow's decompression-bomb limit") from None
    except PermissionError:
        raise RtkError("permission denied") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error… for bad data
        raise RtkError(f"corrupt or truncated {_format_name(path, fmt)} ({first_line(exc, 200)})") from None
    return image


def _quiet_bomb_warning(image_module) -> None:
    """Silence Pillow's own DecompressionBombWarning: :func:`load_image` says it in one line, with the file.

    Set on every call (``filterwarnings`` replaces an identical filter rather than adding one), so a
    caller that resets the warning filters in between still gets one line, not Pillow's two.
    """
    warnings.filterwarnings("ignore", category=image_module.DecompressionBombWarning)


def _orientation(img: "Image.Image") -> int | None:
    try:
        return img.getexif().get(0x0112)  # EXIF Orientation
    except (OSError, ValueError, SyntaxError):  # a malformed EXIF block: treat as no orientation
        return None


def _format_name(path: Path, fmt: str | None) -> str:
    return (fmt or path.suffix.lstrip(".") or "image").upper()


def _content_hint(path: Path) -> str:
    """A short description of what a non-image file seems to be."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"%PDF"):
        return "looks like a PDF"
    if head.startswith((b"PK\x03\x04",)):
        return "looks like a ZIP archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary content"
    return "looks like text"
