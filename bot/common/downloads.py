"""Downloading a user's attachment: only from the platform's own hosts, capped while streaming.

The URL of an attachment comes from a chat event, so it is not trusted: its host must be one of
the platform's file hosts from config (the Slack bot token is only ever sent to those), the
declared size and the streamed bytes are both checked against the limit, and the body is read in
chunks so an oversized file never sits whole in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp

from bot.common.handle import Attachment, PendingFile, unsupported
from core.errors import BadInputError, MediaTooLargeError
from core.media.sizes import human_bytes

CHUNK = 64 * 1024


class ForbiddenHostError(BadInputError):
    """An attachment URL points outside the platform's file hosts."""


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether `url` is http(s) on one of `allowed_hosts` ("host" or "host:port" entries)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    port = parts.port
    for entry in allowed_hosts:
        name, _, want_port = entry.lower().partition(":")
        if host == name and (not want_port or str(port) == want_port):
            return True
    return False


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    what: str = "the attachment",
) -> tuple[bytes, str]:
    """The body of `url` and its Content-Type; errors say what went wrong for the user."""
    if not host_allowed(url, allowed_hosts):
        raise ForbiddenHostError(f"{what} is not on the chat platform's file servers; it was not downloaded")
    try:
        async with session.get(url, headers=dict(headers or {}), allow_redirects=False) as response:
            if response.status != 200:
                raise BadInputError(f"{what} could not be downloaded (HTTP {response.status})")
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise MediaTooLargeError(
                    f"{what} is {human_bytes(declared)}; the limit is {human_bytes(max_bytes)}"
                )
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type == "text/html":
                raise BadInputError(f"{what} could not be downloaded (the server sent a web page)")
            body = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise MediaTooLargeError(
                        f"{what} is over the limit of {human_bytes(max_bytes)}"
                    )
            return bytes(body), content_type
    except aiohttp.ClientError as exc:
        raise BadInputError(f"{what} could not be downloaded ({type(exc).__name__})") from exc


async def fetch_files(
    session: aiohttp.ClientSession,
    files: Sequence[PendingFile],
    *,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
) -> list[Attachment]:
    """Download checked attachments (`bot.common.handle.check_file`) from the platform's hosts."""
    hosts = tuple(allowed_hosts)

    async def fetch(pending: PendingFile) -> Attachment:
        if not pending.url:
            raise unsupported(pending.filename, "no download link")
        data, _ = await download(
            session, pending.url, allowed_hosts=hosts, max_bytes=max_bytes, headers=headers, what=pending.filename
        )
        return Attachment(pending.kind, data, pending.filename, pending.transcript)

    return list(await asyncio.gather(*(fetch(pending) for pending in files)))
