"""Which files are images and which are audio clips, by MIME type and by name.

One list for every front end and for ingest: a chat attachment, a web upload, a CLI file and a
folder being indexed are all recognised the same way.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

MediaKind = Literal["image", "audio"]

# HEIC/HEIF (phone photos) are read through pillow-heif, AVIF by Pillow itself (11+).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
AUDIO_SUFFIXES = frozenset({".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac", ".wav", ".flac", ".webm"})
# Chat clips come in video containers; they count as audio.
_AUDIO_VIDEO_TYPES = ("video/mp4", "video/webm", "video/quicktime")


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image suffixes (case does not matter)."""
    return PurePosixPath(name.lower()).suffix in IMAGE_SUFFIXES


def media_kind(filename: str, content_type: str | None = None) -> MediaKind | None:
    """"image", "audio" or None: the MIME type first, then the file name's suffix."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("audio/") or mime in _AUDIO_VIDEO_TYPES:
        return "audio"
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return None
