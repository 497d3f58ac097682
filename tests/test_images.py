"""Decoding real image files: every format and pixel mode people have, EXIF orientation, and a
reason for every file that cannot be read."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from toolkit.core.errors import RtkError
from toolkit.core.images import describe_ignored, find_images, load_image, scan_folder
from toolkit.core.spec import Preprocess
from toolkit.core.transforms import image_to_array, to_channels

ORIENTATION = 0x0112


def halves(width: int = 48, height: int = 32) -> Image.Image:
    """A non-square RGB image: left half white, right half black, a red band along the top."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = 255
    arr[:6, :] = (255, 0, 0)
    return Image.fromarray(arr)


def save_with_orientation(img: Image.Image, path, orientation: int, **kw) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    img.save(path, exif=exif, **kw)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_exif_orientation_is_applied(tmp_path, fmt, suffix):
    path = tmp_path / f"sideways{suffix}"
    # Orientation 6: the stored pixels must be turned 90° clockwise to be shown upright.
    save_with_orientation(halves(), path, 6, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    with Image.open(path) as raw:
        assert raw.size == (48, 32)
    img = load_image(path)
    assert img.size == (32, 48)
    arr = np.asarray(img.convert("RGB"))
    # Turned clockwise, the white left half is on top and the red top band is on the right.
    assert arr[: 48 // 2 - 2, :-8].mean() > 200 and arr[48 // 2 + 2 :, :-8].mean() < 50
    assert arr[:, -3, 0].mean() > 200 and arr[:, -3, 1].mean() < 60


def test_orientation_changes_the_network_input(tmp_path):
    """The tag is not cosmetic: the array a model sees differs from the raw pixels' one."""
    pre = Preprocess(input_size=(16, 16), resize=16, crop=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    save_with_orientation(halves(), tmp_path / "tagged.png", 6)
    halves().save(tmp_path / "untagged.png")
    halves().transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    tagged = image_to_array(load_image(tmp_path / "tagged.png"), pre)
    np.testing.assert_array_equal(tagged, image_to_array(load_image(tmp_path / "upright.png"), pre))
    assert np.abs(tagged - image_to_array(load_image(tmp_path / "untagged.png"), pre)).max() > 1.0


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = load_image(tmp_path / "anim.gif")
    r, g, b = np.asarray(to_channels(img, "rgb")).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 50 and b < 50


def test_sixteen_bit_png_uses_full_range(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    img = load_image(tmp_path / "deep.png")
    assert img.mode.startswith("I")
    assert np.asarray(to_channels(img, "gray")).mean() == pytest.approx(128, abs=1)
    # Dark 16-bit content stays dark instead of being mistaken for 8-bit data.
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(tmp_path / "dark.png")
    assert np.asarray(to_channels(load_image(tmp_path / "dark.png"), "gray")).max() <= 1


def test_transparent_pixels_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.save(tmp_path / "pal.png", transparency=0)
    for name in ("clear.png", "pal.png"):
        assert np.asarray(to_channels(load_image(tmp_path / name), "rgb")).min() == 255


def test_cmyk_tiff_and_modes_to_model_channels(tmp_path):
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.tiff")  # pure red in print colours
    img = load_image(tmp_path / "cmyk.tiff")
    assert img.mode == "CMYK"
    r, g, b = np.asarray(to_channels(img, "rgb")).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 50 and b < 50
    pre_rgb = Preprocess(input_size=(8, 8), resize=8, crop=False)
    pre_gray = Preprocess(input_size=(8, 8), resize=8, crop=False, channels="gray", mean=(0.5,), std=(0.25,))
    assert image_to_array(img, pre_rgb).shape == (3, 8, 8)
    assert image_to_array(img, pre_gray).shape == (1, 8, 8)
    gray = Image.new("L", (9, 9), 100)
    assert image_to_array(gray, pre_rgb).shape == (3, 8, 8)


@pytest.mark.parametrize("name,fmt", [("a.webp", "WEBP"), ("b.bmp", "BMP"), ("C.JPEG", "JPEG"), ("d.Tif", "TIFF")])
def test_formats_and_suffix_case(tmp_path, name, fmt):
    halves().save(tmp_path / name, format=fmt)
    assert load_image(tmp_path / name).size == (48, 32)
    assert find_images(tmp_path) == [tmp_path / name]


def test_find_images_filters_sorts_and_recurses(tmp_path):
    for rel in ("b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.gif", "sub/deeper/d.webp", ".cache/e.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.name for p in find_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path, recursive=True)] == [
        "a.JPG", "b.png", "sub/c.gif", "sub/deeper/d.webp"
    ]
    with pytest.raises(RtkError, match="does not exist"):
        find_images(tmp_path / "missing")
    with pytest.raises(RtkError, match="not a folder"):
        find_images(tmp_path / "b.png")


def test_scan_folder_lists_files_without_an_image_suffix_but_not_hidden_ones(tmp_path):
    for rel in ("a.png", "notes.txt", "photo.heic", "README", ".DS_Store", "sub/b.HEIC", ".cache/c.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    flat = scan_folder(tmp_path)
    assert flat.images == [tmp_path / "a.png"]
    assert [p.name for p in flat.ignored] == ["README", "notes.txt", "photo.heic"]
    deep = scan_folder(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep.ignored] == ["README", "notes.txt", "photo.heic", "sub/b.HEIC"]


def test_describe_ignored_names_a_few_then_counts_the_rest(tmp_path):
    files = [tmp_path / n for n in ("a.txt", "b.heic", "sub/c.doc", "d.raw", "e.psd")]
    assert describe_ignored(files[:1], tmp_path) == "ignored 1 file that is not an image by its suffix: a.txt"
    assert describe_ignored(files, tmp_path) == (
        "ignored 5 files that are not images by their suffix: a.txt, b.heic, sub/c.doc and 2 more"
    )


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty file"),
        (b"shopping list: eggs, milk\n", "not an image (looks like text)"),
        (b"%PDF-1.7\n\x00\x01\x02", "not an image (looks like a PDF)"),
        ("truncated", "truncated"),
        ("corrupt", "corrupt"),
    ],
)
def test_unreadable_files_raise_with_reason(tmp_path, content, reason):
    data = _png_bytes()
    if content == "truncated":
        content = data[: len(data) // 2]
    elif content == "corrupt":
        mid = len(data) // 2
        content = data[:mid] + bytes(64) + data[mid + 64 :]  # zeroed IDAT bytes break the checksum
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(RtkError, match=re.escape(reason)):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(RtkError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
