"""Decode untrusted image bytes into a plain RGB picture, within the configured limits.

Every failure a user can cause becomes a `BadInputError` with a short message that says what to
do: too many bytes or pixels (`MediaTooLargeError`), not an image, truncated or damaged
(`UnsupportedMediaError`). The pixel limit is checked from the header, before any pixel is
decoded, so a small file that claims a huge picture (a decompression bomb) costs nothing.

Limit: damage inside a JPEG's compressed data (as opposed to a cut-off file or a broken
structure) is repaired silently by libjpeg and decodes to smeared pixels; Pillow reports no error
for it, so neither does this module.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.config import MediaLimits
from core.errors import MediaTooLargeError, UnsupportedMediaError
from core.media.sizes import check_file_size

_NOT_AN_IMAGE = "the file is not an image I can read — send a PNG, JPEG, GIF or WebP image"
_DAMAGED = "the image file is damaged or incomplete — send it again, or export it anew"
_WHITE = (255, 255, 255)
# Formats people send as pictures. Pillow would open more (EPS runs Ghostscript, PSD, ...);
# HEIF and AVIF count when the installed Pillow or a plugin such as pillow-heif provides them.
_WANTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF")
# Errors Pillow's decoders raise on bad data (a truncated file is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def _megapixels(pixels: int) -> str:
    megapixels = pixels / 1_000_000
    return f"{megapixels:,.0f} MP" if megapixels >= 100 else f"{megapixels:.3g} MP"


def _too_many_pixels(found: str, limit: int) -> MediaTooLargeError:
    return MediaTooLargeError(
        f"image {found}; the limit is {_megapixels(limit)} — send a smaller image"
    )


def _over_pixel_limit(width: int, height: int, limits: MediaLimits) -> MediaTooLargeError:
    found = f"is {width}×{height} pixels ({_megapixels(width * height)})"
    return _too_many_pixels(found, limits.max_image_pixels)


def _bomb_error(exc: Exception, limits: MediaLimits) -> MediaTooLargeError:
    """Pillow refused the size: report its count (from its message) and the lower limit."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    found = f"is {_megapixels(int(match.group(1)))}" if match else "has too many pixels"
    pillow_limit = Image.MAX_IMAGE_PIXELS or limits.max_image_pixels
    return _too_many_pixels(found, min(limits.max_image_pixels, pillow_limit))


@functools.cache
def _allowed_formats() -> tuple[str, ...]:
    """The wanted formats this Pillow can open (asking for an unknown one is an error)."""
    Image.init()
    return tuple(name for name in _WANTED_FORMATS if name in Image.OPEN)


def _open(data: bytes, limits: MediaLimits) -> Image.Image:
    """Open lazily (header only); Pillow's decompression-bomb warning counts as an error.

    `warnings.catch_warnings` swaps process-wide filters; were two threads to interleave here,
    the only possible effect is on Pillow's bomb warning, which is treated as too large anyway.
    """
    if not data:
        raise UnsupportedMediaError("the image file is empty — send the image again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_allowed_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, limits) from None
    except UnidentifiedImageError:
        raise UnsupportedMediaError(_NOT_AN_IMAGE) from None
    except _DECODE_ERRORS:
        raise UnsupportedMediaError(_DAMAGED) from None


def image_size(data: bytes, limits: MediaLimits | None = None) -> tuple[int, int]:
    """`(width, height)` read from the header alone; the same errors as `decode_image`."""
    limits = limits or MediaLimits()
    check_file_size(len(data), limits, what="image file")
    with _open(data, limits) as image:
        return image.size


def decode_image(data: bytes, limits: MediaLimits) -> Image.Image:
    """A loaded RGB `Image` from untrusted bytes.

    Order: byte size, header (format, size), pixel limit, then decoding. Animated images give
    their first frame; the EXIF orientation is applied; every mode becomes RGB, with
    transparency composited on white and 16-bit or float greys scaled to 8 bits.
    """
    check_file_size(len(data), limits, what="image file")
    with _open(data, limits) as image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise UnsupportedMediaError(_DAMAGED)
        if width * height > limits.max_image_pixels:
            raise _over_pixel_limit(width, height, limits)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.seek(0)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(exc, limits) from None
        except _DECODE_ERRORS:
            raise UnsupportedMediaError(_DAMAGED) from None
        except MemoryError:
            raise _over_pixel_limit(width, height, limits) from None
        return to_rgb(_apply_orientation(image))


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - metadata is best effort; the pixels are already good
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image from any Pillow mode; alpha is composited on white."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_grey_to_8bit(np.asarray(image), mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in image.info
    )
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError:
        raise UnsupportedMediaError(
            f"images in colour mode {mode} are not supported — send an RGB image"
        ) from None


def _grey_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit or float grey levels to 0..255."""
    values = values.astype(np.float64)
    if mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    elif mode == "I" and values.size and values.max() <= 255:
        scale = 1.0
    else:
        scale = 255.0 / 65535.0
    return np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of `image` (converted to RGB first), for thumbnails and stored copies."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
