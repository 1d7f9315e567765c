"""Who may see, and who may manage, channel memory in a Slack workspace (docs/memory.md).

Seeing: a person's channels are read with `users.conversations` (one call per 1000 channels,
whatever the number of channels with memory, instead of one `conversations.members` call per
channel with memory), answered with the bot's token: Slack lists a private channel only
when the bot is in it too, which memory needs anyway. The answer (channel id -> private or
not) is kept `[memory] access_cache_seconds` per workspace and person, and dropped when Slack
says they left or joined a channel (`member_left_channel`, `member_joined_channel`).

A search posts its results in the channel it was asked in, where every member of that channel
sees them. So its memory scope is the channels with memory the asker is a member of, and of
those only the public ones and the channel itself: a private channel's images are found
only there, never shown to the members of another channel.

Managing (`/search-memory on|off|forget`): a workspace owner or admin (`users.info`:
`is_owner`, `is_primary_owner`, `is_admin`), or the person who created the channel
(`conversations.info`: `creator`). Slack's per-channel "channel managers" are not readable
through the Web API outside Enterprise Grid's admin API, so they are not recognised; an admin
or the channel's creator turns memory on for them. Forgetting the whole workspace needs an
owner or admin.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from core.errors import SearchAllError

PAGE = 1000  # users.conversations' most channels per page
MAX_PAGES = 50
MAX_CACHED = 10_000
TYPES = "public_channel,private_channel"


class SlackAccessError(SearchAllError):
    """Slack would not say who is in which channel (a scope missing, an app not installed)."""


@dataclass(frozen=True)
class Channel:
    """What `conversations.info` says about a channel that matters here."""

    id: str
    private: bool  # a private channel or a group DM
    creator: str
    bot_is_member: bool
    group_dm: bool = False


def missing_scope_message(exc: SlackApiError, method: str) -> str:
    error = exc.response.get("error", "unknown_error")
    if error == "missing_scope":
        needed = exc.response.get("needed") or "channels:read, groups:read, users:read"
        return (f"Slack refused {method}: the app lacks the scope {needed}. Add it to the app "
                "(docs/slack-manifest.yaml) and reinstall it in this workspace")
    return f"Slack refused {method} ({error})"


class SlackAccess:
    """Channel memberships read from Slack, cached a short while per (workspace, person)."""

    def __init__(self, ttl_s: float, *, clock: Any = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Mapping[str, bool]]] = {}

    async def channels_of(self, client: AsyncWebClient, team: str, user: str) -> Mapping[str, bool]:
        """The channels `user` is in that the bot may know of: channel id -> private."""
        key = (team, user)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        found: dict[str, bool] = {}
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            try:
                page = await client.users_conversations(
                    user=user, types=TYPES, limit=PAGE, cursor=cursor
                )
            except SlackApiError as exc:
                raise SlackAccessError(missing_scope_message(exc, "users.conversations")) from exc
            for channel in page.get("channels") or []:
                found[str(channel["id"])] = bool(channel.get("is_private") or channel.get("is_mpim"))
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not cursor:
                break
        if len(self._cache) >= MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + self.ttl_s, found)
        return found

    async def readable(self, client: AsyncWebClient, team: str, user: str, *, here: str,
                       candidates: set[str]) -> frozenset[str]:
        """Of `candidates` (channels with memory), those whose images may be shown to `user` in
        channel `here`: channels they are in, and of those only public ones and `here` itself."""
        if not candidates:
            return frozenset()
        mine = await self.channels_of(client, team, user)
        return frozenset(c for c in candidates if c in mine and (c == here or not mine[c]))

    def forget(self, team: str, user: str | None = None) -> None:
        """Drop the cached memberships of `user` (a channel left or joined), or of a whole workspace."""
        self._cache = {k: v for k, v in self._cache.items()
                       if not (k[0] == team and (user is None or k[1] == user))}

    # ------------------------------------------------------------------ managing

    @staticmethod
    async def channel(client: AsyncWebClient, channel: str) -> Channel:
        try:
            info = (await client.conversations_info(channel=channel))["channel"]
        except SlackApiError as exc:
            if exc.response.get("error") == "channel_not_found":
                raise SlackAccessError(
                    "I cannot see this channel: invite me first (`/invite @Search All`), then try again"
                ) from exc
            raise SlackAccessError(missing_scope_message(exc, "conversations.info")) from exc
        return Channel(
            id=str(info["id"]),
            private=bool(info.get("is_private") or info.get("is_mpim")),
            creator=str(info.get("creator") or ""),
            bot_is_member=bool(info.get("is_member")),
        )

    @staticmethod
    async def is_admin(client: AsyncWebClient, user: str) -> bool:
        """A workspace owner or admin."""
        try:
            person = (await client.users_info(user=user))["user"]
        except SlackApiError as exc:
            raise SlackAccessError(missing_scope_message(exc, "users.info")) from exc
        return bool(person.get("is_owner") or person.get("is_primary_owner") or person.get("is_admin"))

    async def may_manage(self, client: AsyncWebClient, user: str, channel: Channel) -> bool:
        """A workspace owner or admin, or the channel's creator."""
        return channel.creator == user or await self.is_admin(client, user)
