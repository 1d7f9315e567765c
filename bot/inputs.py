"""From what a chat message holds (text, attachments) to a core `Query`.

Attachments are recognised by MIME type, then by file name; anything else is refused with a
message naming the file. The typed text may carry `+`/`-`/weights and `filter:` words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from core.config import MediaLimits
from core.errors import BadInputError, UnsupportedMediaError
from core.query import AudioAs, Query, Term, parse_query_text

MediaKind = Literal["image", "audio"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac", ".wav", ".flac", ".webm"}


def media_kind(filename: str, content_type: str | None = None) -> MediaKind | None:
    """"image", "audio" or None. Video containers (mp4, webm) count as audio: chat clips use them."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("audio/") or mime in ("video/mp4", "video/webm", "video/quicktime"):
        return "audio"
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    return None


@dataclass(frozen=True)
class Attachment:
    """A downloaded file of a message."""

    kind: MediaKind
    data: bytes
    filename: str
    transcript: str | None = None  # what the platform heard in an audio clip


def check_attachment_count(count: int, max_attachments: int) -> None:
    if count > max_attachments:
        raise BadInputError(
            f"{count} files attached; at most {max_attachments} are searched at once — send fewer"
        )


def unsupported(filename: str, content_type: str | None) -> UnsupportedMediaError:
    kind = f" ({content_type})" if content_type else ""
    return UnsupportedMediaError(
        f"{filename}{kind} is not an image or audio clip: attach a JPEG, PNG, WebP or GIF image, "
        "or a voice message / audio file"
    )


def build_query(
    text: str,
    attachments: Sequence[Attachment],
    *,
    limits: MediaLimits,
    limit: int,
    offset: int = 0,
    audio_as: AudioAs = "auto",
) -> Query:
    """The query for a message: its text terms and filters, then one term per attachment."""
    parsed = parse_query_text(text, max_chars=limits.max_query_chars, max_terms=limits.max_terms)
    terms = list(parsed.terms)
    for attachment in attachments:
        terms.append(
            Term(attachment.kind, attachment.data, 1.0, label=attachment.filename,
                 transcript=attachment.transcript)
        )
    return Query(
        terms=tuple(terms),
        limit=limit,
        offset=offset,
        include=parsed.include,
        exclude=parsed.exclude,
        audio_as=audio_as,
    )
