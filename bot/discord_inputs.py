"""What a Discord request carries, as the shared bot layer's inputs.

Attachments are checked before anything is downloaded (kind by MIME type or name, declared size,
count), so a refusal can be an instant ephemeral reply; then they are downloaded from Discord's
file hosts only (`[discord] attachment_hosts`), capped at `[limits] max_file_bytes`. A voice
message (flag 8192, Ogg/Opus) is an audio attachment like any other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import discord

from bot.downloads import download
from bot.inputs import Attachment, MediaKind, check_attachment_count, media_kind, unsupported
from core.config import MediaLimits
from core.errors import BadInputError
from core.media.sizes import check_file_size


@dataclass(frozen=True)
class PendingFile:
    """An attachment that passed the checks that need no download."""

    kind: MediaKind
    url: str
    filename: str


def check_file(attachment: discord.Attachment, limits: MediaLimits, *, expect: MediaKind | None = None) -> PendingFile:
    """Kind and declared size of one attachment; `expect` insists on a kind (the command's slot)."""
    kind = media_kind(attachment.filename, attachment.content_type)
    if kind is None:
        raise unsupported(attachment.filename, attachment.content_type)
    if expect is not None and kind != expect:
        raise BadInputError(f"{attachment.filename} is not {'an image' if expect == 'image' else 'an audio clip'}: "
                            f"attach it as the {kind} option instead")
    check_file_size(attachment.size, limits, what=attachment.filename)
    return PendingFile(kind, attachment.url, attachment.filename)


def check_files(
    attachments: Sequence[discord.Attachment], limits: MediaLimits, max_attachments: int
) -> list[PendingFile]:
    check_attachment_count(len(attachments), max_attachments)
    return [check_file(a, limits) for a in attachments]


async def fetch_files(
    session: aiohttp.ClientSession, files: Sequence[PendingFile], *, allowed_hosts: Sequence[str], limits: MediaLimits
) -> list[Attachment]:
    """Download checked attachments from Discord's file hosts only."""
    fetched = []
    for pending in files:
        data, _ = await download(
            session, pending.url, allowed_hosts=allowed_hosts, max_bytes=limits.max_file_bytes, what=pending.filename
        )
        fetched.append(Attachment(pending.kind, data, pending.filename))
    return fetched


def first_of_kind(message: discord.Message, kind: MediaKind) -> discord.Attachment:
    """The first attachment of `kind` in a message (context menus), or a message saying there is none."""
    for attachment in message.attachments:
        if media_kind(attachment.filename, attachment.content_type) == kind:
            return attachment
    what = "image" if kind == "image" else "voice message or audio file"
    raise BadInputError(f"that message has no {what} to search with")


def without_mentions(content: str, user_id: int) -> str:
    """A message's text without the mentions of the bot (`<@id>` and `<@!id>`)."""
    return re.sub(rf"<@!?{user_id}>", " ", content).strip()
