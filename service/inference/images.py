"""Pictures in and out: a photo or scan of a digit -> an 8x8 0..16 array, and back to PNG.

scikit-learn's digits were made by scaling each handwritten digit's bounding box into a
32x32 bitmap and counting the ink pixels in each 4x4 block (0..16). ``digit_from_image``
does the same to an uploaded picture: ink = darkness, crop to the ink, fit it into a
square, area-average down to 8x8, scale to 0..16.
"""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.platform.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

ACCEPTED_FORMATS = {"PNG", "JPEG"}
_INK_THRESHOLD = 0.2  # fraction of full darkness that counts as ink when cropping


def digit_from_image(data: bytes, max_pixels: int, field: str = "image") -> np.ndarray:
    """Decode a PNG/JPEG of a dark digit on a light background into a (8, 8) float32 array."""
    image = _open(data, max_pixels, field)
    ink = _ink(image)  # (H, W) in 0..1, 1 = darkest
    rows, cols = np.nonzero(ink > _INK_THRESHOLD)
    if rows.size == 0:
        raise InvalidInput(f"{field}: no digit found (the image has no dark strokes)", {"field": field})
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(ink.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    square[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    small = Image.fromarray(square).resize((8, 8), Image.Resampling.BOX)
    digit = np.asarray(small, dtype=np.float32)
    return np.clip(digit / max(float(digit.max()), 1e-6) * 16.0, 0.0, 16.0)


def _open(data: bytes, max_pixels: int, field: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{field}: too many pixels ({exc})", {"field": field}) from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"{field}: not a PNG or JPEG image", {"field": field}) from None
    except Exception as exc:  # a recognised format with a broken header
        raise InvalidInput(f"{field}: the image data is corrupt ({exc})", {"field": field}) from None
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(
            f"{field}: {image.format} images are not accepted; send PNG or JPEG", {"field": field}
        )
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{field}: {width}x{height} pixels is more than the limit of {max_pixels}",
            {"field": field},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except Exception as exc:  # truncated or corrupt data: Pillow raises many types
        raise InvalidInput(f"{field}: the image data is corrupt ({exc})", {"field": field}) from None
    return ImageOps.exif_transpose(image)


def _ink(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image.convert("RGBA"))
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return 1.0 - grey


def png_from_digit(digit: np.ndarray) -> str:
    """An (8, 8) 0..16 array as a base64 greyscale PNG, dark ink on white."""
    pixels = np.round(255.0 - np.clip(digit, 0, 16) * (255.0 / 16.0)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
