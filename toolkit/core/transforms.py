"""Image → network input, following a :class:`Preprocess`.

One implementation serves training, evaluation and prediction, so the pixels a model sees
in production are prepared exactly as in training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from toolkit.core.spec import Preprocess

if TYPE_CHECKING:
    from PIL import Image


def _resample(name: str):
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


def resize_and_crop(img: "Image.Image", pre: Preprocess) -> "Image.Image":
    """Resize the shorter side to ``pre.resize`` and centre-crop, or resize straight to size."""
    height, width = pre.input_size
    resample = _resample(pre.interpolation)
    if not pre.crop:
        return img.resize((width, height), resample)
    w, h = img.size
    scale = pre.resize / min(w, h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def to_channels(img: "Image.Image", channels: str) -> "Image.Image":
    """Convert any PIL mode (palette, RGBA, CMYK, 16-bit, …) to 8-bit RGB or grayscale.

    Transparent pixels are composited onto white, as a viewer shows them.
    """
    from PIL import Image

    if img.mode.startswith("I;16"):
        # A 16-bit file spans 0..65535 whatever its content, so every image is scaled alike.
        img = _scale_to_l(np.asarray(img, dtype=np.float64), 65535.0)
    elif img.mode == "I":
        # 32-bit integer pixels: usually 16-bit data widened by the decoder (TIFF, old PNG
        # readers); only values above 255 tell it apart from 8-bit data.
        arr = np.asarray(img, dtype=np.float64)
        img = _scale_to_l(arr, 65535.0 if arr.max(initial=0) > 255 else 255.0)
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = _scale_to_l(arr, 1.0 if arr.max(initial=0) <= 1.0 else 255.0)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == "gray" else "RGB")


def _scale_to_l(arr: np.ndarray, peak: float) -> "Image.Image":
    from PIL import Image

    return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def image_to_array(img: "Image.Image", pre: Preprocess) -> np.ndarray:
    """One image as a normalised CHW float32 array ready for the network."""
    img = resize_and_crop(to_channels(img, pre.channels), pre)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1))
