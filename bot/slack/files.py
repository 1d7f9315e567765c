"""Files of a Slack message (images, audio clips) downloaded into `Attachment`s.

A file's `url_private_download` (or `url_private`) needs the bot token. The URL comes from an
event, so it is not trusted: the token is sent only to `[slack] file_hosts`, any other host is
refused before a connection is made (bot.common.downloads). Slack answers a GET without a valid token
with an HTML sign-in page and status 200; `download` refuses HTML bodies.

Audio clips recorded in Slack are files with `subtype == "slack_audio"` whose MIME type varies
(audio/mp4, audio/webm, video/mp4); Slack's own transcript (`transcription.preview`) travels with
them and is handed to the core as the clip's transcript. Files shared from elsewhere may arrive
as `file_access == "check_file_info"` stubs holding only an id: `files.info` completes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.common.downloads import fetch_files
from bot.common.handle import Attachment, check_attachment_count, check_file
from core.config import MediaLimits
from core.media.kinds import MediaKind, media_kind

FileInfo = Callable[[str], Awaitable[Mapping[str, Any]]]  # file id -> the full file object


@dataclass(frozen=True)
class SlackFile:
    id: str
    name: str
    mimetype: str
    subtype: str
    url: str | None
    size: int | None
    transcript: str | None

    @classmethod
    def from_event(cls, data: Mapping[str, Any]) -> SlackFile:
        size = data.get("size")
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name") or data.get("title") or data.get("id") or "file"),
            mimetype=str(data.get("mimetype") or ""),
            subtype=str(data.get("subtype") or ""),
            url=data.get("url_private_download") or data.get("url_private"),
            size=size if isinstance(size, int) else None,
            transcript=transcript_of(data),
        )

    @property
    def kind(self) -> MediaKind | None:
        if self.subtype == "slack_audio":
            return "audio"
        return media_kind(self.name, self.mimetype)


def transcript_of(data: Mapping[str, Any]) -> str | None:
    """Slack's transcript of an audio clip: `transcription.preview` ({"content": ...} or text)."""
    transcription = data.get("transcription")
    if not isinstance(transcription, Mapping) or transcription.get("status") not in (None, "complete"):
        return None
    preview = transcription.get("preview")
    text = preview.get("content") if isinstance(preview, Mapping) else preview
    if not isinstance(text, str):
        return None
    return " ".join(text.split()) or None


class SlackFileFetcher:
    """Downloads message files with the bot token of their workspace, from Slack's file hosts only."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        hosts: Iterable[str],
        limits: MediaLimits,
        max_attachments: int,
    ):
        self._session = session
        self.hosts = tuple(hosts)
        self.limits = limits
        self.max_attachments = max_attachments

    async def attachments(
        self, raw_files: Sequence[Mapping[str, Any]], *, token: str, file_info: FileInfo | None = None
    ) -> list[Attachment]:
        """All files of a message, checked (count, kind, size) before any is downloaded with
        `token` (the bot token of the workspace the message comes from)."""
        check_attachment_count(len(raw_files), self.max_attachments)
        files = [SlackFile.from_event(await self._complete(raw, file_info)) for raw in raw_files]
        checked = [
            check_file(file.name, file.mimetype or None, file.size, file.url, self.limits,
                       kind=file.kind, transcript=file.transcript)
            for file in files
        ]
        return await fetch_files(self._session, checked, allowed_hosts=self.hosts,
                                 max_bytes=self.limits.max_file_bytes,
                                 headers={"Authorization": f"Bearer {token}"})

    async def _complete(self, raw: Mapping[str, Any], file_info: FileInfo | None) -> Mapping[str, Any]:
        if raw.get("file_access") == "check_file_info" and file_info is not None and raw.get("id"):
            return await file_info(str(raw["id"]))
        return raw
