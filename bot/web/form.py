"""The search form of the web page: a multipart upload read with caps, turned into a `Query`.

Nothing is read whole before it is checked: the declared body size is refused up front, each
file is streamed in chunks and refused as soon as it passes `[limits] max_file_bytes`, text
fields are capped, and the number of files is capped by `[bot] max_attachments`. Files are
recognised as images or audio by MIME type, then by name (`core.media.kinds.media_kind`), whichever
field they came in; anything else is refused with a message naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from aiohttp import BodyPartReader, web

from bot.common.handle import (
    Attachment,
    PageSize,
    build_query,
    check_attachment_count,
    page_size,
    unsupported,
)
from core.config import MediaLimits, Settings
from core.errors import BadInputError, MediaTooLargeError, QuerySyntaxError
from core.media.kinds import media_kind
from core.media.sizes import human_bytes
from core.query import AudioAs, Query

FILE_FIELDS = ("image", "audio")
TEXT_FIELDS = ("text", "limit", "audio_as")
CHUNK = 64 * 1024
# Room for the text fields and the multipart framing around the files.
FORM_OVERHEAD = 256 * 1024
SMALL_FIELD_BYTES = 64
MAX_LIMIT_DIGITS = 9


def max_body_bytes(settings: Settings) -> int:
    """The largest request body a search can need: every file at the size limit, plus text."""
    return settings.limits.max_file_bytes * settings.bot.max_attachments + FORM_OVERHEAD


@dataclass
class SearchForm:
    """What the page sent, read and checked; `query()` makes the core query of it."""

    text: str = ""
    limit: int | None = None
    audio_as: AudioAs = "auto"
    attachments: list[Attachment] = field(default_factory=list)

    def page_size(self, settings: Settings) -> PageSize:
        """Results per page: the number asked for, at most `[search] max_limit` (with a note)."""
        return limit_page_size(self.limit, settings)

    def query(self, settings: Settings) -> Query:
        return build_query(
            self.text,
            self.attachments,
            limits=settings.limits,
            limit=self.page_size(settings).value,
            audio_as=self.audio_as,
        )


def parse_limit(value: str) -> int | None:
    """The number of results asked for ("" for the default), 1 or more; more than a page holds
    is shown as a full page with a note (`limit_page_size`)."""
    value = value.strip()
    if not value:
        return None
    # ASCII digits only: "²" passes isdigit() and fails int().
    if not (value.isascii() and value.isdigit()) or not value.strip("0"):
        raise BadInputError("the number of results must be a whole number, 1 or more")
    digits = value.lstrip("0")
    # More digits than any page: the largest number kept short (a full page, with the note).
    return int(digits) if len(digits) <= MAX_LIMIT_DIGITS else 10**MAX_LIMIT_DIGITS


def limit_page_size(asked: int | None, settings: Settings) -> PageSize:
    return page_size(asked, default=settings.search.default_limit, most=settings.search.max_limit)


def parse_audio_as(value: str) -> AudioAs:
    value = value.strip() or "auto"
    choices = get_args(AudioAs)
    if value not in choices:
        raise BadInputError(f"audio_as must be one of {', '.join(choices)}, not {value!r}")
    return value  # type: ignore[return-value]


async def _read_capped(part: BodyPartReader, cap: int) -> bytes | None:
    """The part's bytes, or None as soon as more than `cap` arrive (the rest is not read)."""
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        data += chunk
        if len(data) > cap:
            return None
    return bytes(data)


async def _read_file(part: BodyPartReader, limits: MediaLimits) -> bytes:
    data = await _read_capped(part, limits.max_file_bytes)
    if data is None:
        raise MediaTooLargeError(
            f"the file {part.filename} is larger than the limit of {human_bytes(limits.max_file_bytes)}"
            " — choose a smaller file"
        )
    return data


async def read_search_form(request: web.Request, settings: Settings) -> SearchForm:
    """Read the page's multipart form (fields `text`, `limit`, `audio_as`, files `image`, `audio`)."""
    limit_bytes = max_body_bytes(settings)
    if request.content_length is not None and request.content_length > limit_bytes:
        raise MediaTooLargeError(
            f"the upload is {human_bytes(request.content_length)}; the limit is "
            f"{human_bytes(settings.limits.max_file_bytes)} per file, "
            f"{settings.bot.max_attachments} files at most — choose smaller files"
        )
    if not request.content_type.startswith("multipart/"):
        raise BadInputError("send the search as multipart/form-data (the page's form does)")
    form = SearchForm()
    reader = await request.multipart()
    text_cap = settings.limits.max_query_chars * 4  # UTF-8: at most 4 bytes per character
    # Every field once, each file field at most `max_attachments` times: more parts is not the page.
    max_parts = len(TEXT_FIELDS) + len(FILE_FIELDS) * settings.bot.max_attachments
    parts = 0
    while (part := await reader.next()) is not None:
        parts += 1
        if parts > max_parts:
            raise BadInputError(f"the form has more than {max_parts} fields: send one search at a time")
        if not isinstance(part, BodyPartReader):
            raise BadInputError("nested multipart bodies are not supported")
        name = part.name or ""
        if name in FILE_FIELDS:
            if not part.filename:  # a file input left empty
                if await _read_capped(part, 0) is None:
                    raise BadInputError(f"the {name} field carries data but no file name")
                continue
            check_attachment_count(len(form.attachments) + 1, settings.bot.max_attachments)
            content_type = part.headers.get("Content-Type")
            kind = media_kind(part.filename, content_type)
            if kind is None:
                raise unsupported(part.filename, content_type)
            data = await _read_file(part, settings.limits)
            form.attachments.append(Attachment(kind, data, part.filename))
        elif name in TEXT_FIELDS:
            raw = await _read_capped(part, text_cap if name == "text" else SMALL_FIELD_BYTES)
            if raw is None:
                limit = settings.limits.max_query_chars if name == "text" else SMALL_FIELD_BYTES
                raise QuerySyntaxError(f"the {name} field is too long; the limit is {limit} characters")
            value = raw.decode(part.get_charset(default="utf-8"), errors="replace")
            if name == "text":
                form.text = value
            elif name == "limit":
                form.limit = parse_limit(value)
            else:
                form.audio_as = parse_audio_as(value)
        else:
            raise BadInputError(f"unexpected form field {name[:40]!r}")
    return form
