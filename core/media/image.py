"""Decode untrusted image bytes into a plain RGB picture, within the configured limits.

Every failure a user can cause becomes a `BadInputError` with a short message that says what to
do: too many bytes or pixels (`MediaTooLargeError`), not an image, truncated or damaged
(`UnsupportedMediaError`). The pixel limit is checked from the header, before any pixel is
decoded, so a small file that claims a huge picture (a decompression bomb) costs nothing.

A progressive JPEG is decoded once per scan, so a small file of many tiny scans costs minutes (a
scan bomb): its scans are counted from the markers before decoding, and a JPEG with more than
`max_jpeg_scans(pixels)` is refused. 16-bit and float greys are scaled to 8 bits a block of
pixels at a time, so they cost little more than their decoded pixels.

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
from collections.abc import Iterator

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
# JPEG scans: libjpeg reads every block of the picture once per scan, about 1 ns per pixel for
# the costliest kind (an AC refinement scan; measured on a 2-core machine, 6000x6000 grey), so
# the scans a JPEG may have shrink with its size: scans x pixels at most _SCAN_PIXELS (about
# 0.6 s of decoding), never fewer than _MIN_SCANS (ordinary progressive JPEGs have 6 to 12)
# nor more than _MAX_SCANS.
_SCAN_PIXELS = 600_000_000
# Segments walked at most (about 0.7 µs each); ordinary JPEGs have a few dozen.
_MAX_SEGMENTS = 10_000
_MIN_SCANS = 16
_MAX_SCANS = 256
# A JPEG marker: 0xFF (and fill bytes), then a code other than 0x00 (a stuffed 0xFF in the
# compressed data), 0x01 (TEM) or a restart marker (0xD0..0xD7), none of which has a length.
_JPEG_MARKER = re.compile(rb"\xff+([\x02-\xcf\xd8-\xfe])")
_SOS, _EOI, _COM = 0xDA, 0xD9, 0xFE
# Kept by `jpeg_without_metadata`: APP0 (JFIF), APP14 (Adobe: how to read the colours) and an
# ICC profile in APP2 (not MPF, whose index would point past the end). Other APPn and comments go.
_KEPT_SEGMENTS = frozenset({0xE0, 0xEE})
_APP2, _ICC_PROFILE = 0xE2, b"ICC_PROFILE\x00"
_ORIENTATION = 0x0112
# Grey levels are scaled to 8 bits this many pixels at a time (8 MB of float64).
_GREY_BLOCK_PIXELS = 1 << 20


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
    """The wanted formats this Pillow can open (asking for an unknown one is an error); HEIF
    through pillow-heif when it is installed (a dependency; AVIF is Pillow's own since 11)."""
    Image.init()
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        pass
    else:
        register_heif_opener()
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


def max_jpeg_scans(pixels: int) -> int:
    """How many scans a JPEG of `pixels` pixels may have (see `_SCAN_PIXELS`)."""
    return max(_MIN_SCANS, min(_MAX_SCANS, _SCAN_PIXELS // max(pixels, 1)))


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """`(marker, start, end)` of each segment of JPEG `data` after its SOI, up to its EOI.

    Each segment is skipped by its length (so a JPEG inside an EXIF thumbnail is not walked);
    a scan's segment runs on over its compressed data to the next marker. The walk ends at the
    end of the first picture (the second picture of an MPO file is not walked) or where the
    structure breaks (the decoder then reports the damage).
    """
    pos, end = 2, len(data)
    while (match := _JPEG_MARKER.search(data, pos)) is not None:
        marker, pos = match.group(1)[0], match.end()
        start = pos - 2  # fill bytes before the marker are left out
        if marker == _EOI or pos + 2 > end:
            return
        pos += struct.unpack(">H", data[pos : pos + 2])[0]  # the length counts its own 2 bytes
        if marker == _SOS:
            following = _JPEG_MARKER.search(data, pos)
            pos = following.start() if following is not None else end
        yield marker, start, min(pos, end)


def jpeg_scans(data: bytes, stop_after: int | None = None) -> int:
    """The number of scans (SOS markers) of the first picture of JPEG `data`; counting ends
    early once it passes `stop_after`."""
    count = 0
    for marker, _, _ in _jpeg_segments(data):
        if marker == _SOS:
            count += 1
            if stop_after is not None and count > stop_after:
                break
    return count


def _kept_segment(marker: int, identifier: bytes) -> bool:
    """Whether `jpeg_without_metadata` keeps a segment (`identifier`: its first 12 bytes)."""
    if marker == _APP2:
        return identifier == _ICC_PROFILE
    return marker in _KEPT_SEGMENTS or not (0xE0 <= marker <= 0xEF or marker == _COM)


def jpeg_without_metadata(data: bytes) -> bytes | None:
    """JPEG `data` without its metadata, losslessly: only the segments that shape the pixels
    and JFIF, an ICC profile and Adobe's colour transform (`_KEPT_SEGMENTS`) are kept; EXIF
    (GPS, camera, time), XMP, IPTC, comments, maker data and whatever follows the picture go.

    None when that cannot be done losslessly: the EXIF orientation says the picture must be
    turned (without it, it would show the wrong way round) or the segments cannot be walked.
    """
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "MPO")) as image:
            if image.getexif().get(_ORIENTATION, 1) != 1:
                return None
    except Exception:  # noqa: BLE001 - unreadable metadata: let the caller re-encode
        return None
    kept = [data[:2]]
    for marker, start, end in _jpeg_segments(data):
        if end >= len(data):
            return None  # no end marker: not a whole picture
        if _kept_segment(marker, data[start + 4 : start + 16]):
            kept.append(data[start:end])
    kept.append(b"\xff\xd9")  # and nothing after it
    return b"".join(kept)


def _check_scans(data: bytes, image: Image.Image) -> None:
    """Refuse a JPEG with more scans than `max_jpeg_scans` allows for its size, or with more
    segments than `_MAX_SEGMENTS` (walking millions of empty comments would take seconds)."""
    width, height = image.size
    limit = max_jpeg_scans(width * height)
    scans = 0
    for index, (marker, _, _) in enumerate(_jpeg_segments(data)):
        if index == _MAX_SEGMENTS:
            raise MediaTooLargeError(
                f"the JPEG has more than {_MAX_SEGMENTS:,} segments "
                "— save it as a standard JPEG and send it again"
            )
        scans += marker == _SOS
        if scans > limit:
            raise MediaTooLargeError(
                f"the JPEG has more than {limit} progressive scans; the limit for "
                f"{width}×{height} pixels is {limit} — save it as a standard JPEG and send it again"
            )


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
        if image.format in ("JPEG", "MPO"):
            _check_scans(data, image)
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
    """Scale 16-bit, 32-bit or float grey levels to 0..255.

    In float64 a block of pixels at a time, into the 8-bit result: the extra memory is the
    result and one block, not float64 copies of the whole picture.
    """
    if mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    elif mode == "I" and values.size and values.max() <= 255:
        scale = 1.0
    else:
        scale = 255.0 / 65535.0
    flat = values.reshape(-1)
    out = np.empty(flat.shape, np.uint8)
    block = np.empty(max(1, min(flat.size, _GREY_BLOCK_PIXELS)), np.float64)
    for start in range(0, flat.size, block.size):
        part = block[: min(block.size, flat.size - start)]
        np.multiply(flat[start : start + part.size], scale, out=part, dtype=np.float64)
        np.nan_to_num(part, copy=False)
        np.clip(part, 0, 255, out=part)
        np.round(part, out=part)
        out[start : start + part.size] = part
    return out.reshape(values.shape)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of `image` (converted to RGB first), for thumbnails and stored copies; none of
    its metadata is written (Pillow would copy a comment, XMP, ... from `image.info`)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    buffer = io.BytesIO()
    rgb = to_rgb(image)  # always a new image
    rgb.info = {}
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def served_jpeg(data: bytes) -> bytes:
    """A stored JPEG as it may be shown or sent: without metadata (copies stored before the
    ingest stripped it still carry EXIF, GPS included). Losslessly when it can be, else turned
    by its EXIF orientation and re-encoded; bytes that are not a JPEG are returned as they are."""
    if data[:3] != b"\xff\xd8\xff":
        return data
    stripped = jpeg_without_metadata(data)
    if stripped is not None:
        return stripped
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "MPO")) as image:
            return encode_jpeg(ImageOps.exif_transpose(image), quality=95)
    except Exception:  # noqa: BLE001 - a stored copy that does not decode: nothing to strip
        return data
