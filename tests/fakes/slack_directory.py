"""Channels, members, admins and message history of the fake Slack's workspaces, for channel
memory (bot/slack/memory.py), and the events Slack sends about them.

`FakeSlack.directory` answers, for the workspace of the calling token:

- `users.info`: `is_admin` for people given to `add_admin`;
- `conversations.info`: `is_private`, `creator`, `is_member` (the bot's); a private channel the
  bot is not in is `channel_not_found`, as on Slack;
- `users.conversations` (`user`, `limit`, `cursor`): the channels the person is in, private
  ones only where the bot is too, paginated;
- `conversations.history` (`limit`, `cursor`): newest first, paginated with `next_cursor`;
  `not_in_channel` when the bot is not in it;
- `chat.getPermalink`: `https://<team>.slack.test/archives/<channel>/p<ts digits>`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.fakes.slack import TEAM_ID, command_payload


@dataclass
class FakeChannel:
    id: str
    team: str
    private: bool
    creator: str
    members: set[str]
    bot_member: bool
    history: list[dict[str, Any]] = field(default_factory=list)  # oldest first


@dataclass
class SlackDirectory:
    channels: dict[str, FakeChannel] = field(default_factory=dict)
    admins: set[tuple[str, str]] = field(default_factory=set)  # (team, user)
    page_cap: int = 1000  # the most items a page holds, whatever `limit` asks (Slack may give fewer)

    def __post_init__(self) -> None:
        self._ts = itertools.count(1)

    # ------------------------------------------------------------------ test controls

    def add_channel(self, channel: str, *, team: str = TEAM_ID, private: bool = False, creator: str = "",
                    members: set[str] | frozenset[str] = frozenset(), bot_member: bool = True) -> FakeChannel:
        made = FakeChannel(channel, team, private, creator, set(members), bot_member)
        self.channels[channel] = made
        return made

    def add_admin(self, user: str, team: str = TEAM_ID) -> None:
        self.admins.add((team, user))

    def next_ts(self) -> str:
        """A message timestamp after every one given before (seconds.sequence, as Slack's)."""
        return f"{int(time.time())}.{next(self._ts):06d}"

    def post(self, channel: str, message: dict[str, Any]) -> dict[str, Any]:
        """Add a message to the channel's history (what conversations.history returns)."""
        self.channels[channel].history.append(message)
        return message

    @staticmethod
    def permalink(team: str, channel: str, ts: str) -> str:
        return f"https://{team.lower()}.slack.test/archives/{channel}/p{ts.replace('.', '')}"

    # ------------------------------------------------------------------ the Web API

    def answer(self, method: str, params: dict[str, Any], team: str) -> dict[str, Any] | None:
        """The answer to `method` called with a token of `team`, or None when not one of these."""
        if method == "users.info":
            user = str(params.get("user"))
            return {"ok": True, "user": {"id": user, "team_id": team, "is_admin": (team, user) in self.admins,
                                         "is_owner": False, "is_primary_owner": False}}
        if method == "users.conversations":
            return self._users_conversations(params, team)
        if method in ("conversations.info", "conversations.history", "chat.getPermalink"):
            channel = self.channels.get(str(params.get("channel")))
            if channel is None or channel.team != team or (channel.private and not channel.bot_member):
                return {"ok": False, "error": "channel_not_found"}
            if method == "conversations.info":
                return {"ok": True, "channel": {
                    "id": channel.id, "is_channel": not channel.private, "is_group": channel.private,
                    "is_private": channel.private, "is_mpim": False, "is_im": False, "creator": channel.creator,
                    "is_member": channel.bot_member}}
            if method == "chat.getPermalink":
                ts = str(params.get("message_ts"))
                return {"ok": True, "channel": channel.id, "permalink": self.permalink(team, channel.id, ts)}
            if not channel.bot_member:
                return {"ok": False, "error": "not_in_channel"}
            newest_first = list(reversed(channel.history))
            return self._page(newest_first, params, "messages", default_limit=100)
        return None

    def _users_conversations(self, params: dict[str, Any], team: str) -> dict[str, Any]:
        user = str(params.get("user"))
        mine = [
            {"id": c.id, "is_channel": not c.private, "is_group": c.private, "is_private": c.private,
             "is_mpim": False, "is_im": False}
            for c in self.channels.values()
            if c.team == team and user in c.members and (not c.private or c.bot_member)
        ]
        return self._page(mine, params, "channels", default_limit=100)

    def _page(self, items: list[dict[str, Any]], params: dict[str, Any], key: str, *,
              default_limit: int) -> dict[str, Any]:
        start = int(params.get("cursor") or 0)
        limit = min(int(params.get("limit") or default_limit), self.page_cap)
        page = items[start : start + limit]
        more = start + limit < len(items)
        return {"ok": True, key: page, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}


# ---------------------------------------------------------------------- what Slack sends


def channel_message(text: str, *, user: str, channel: str, ts: str, files: list[dict[str, Any]] | None = None,
                    team: str = TEAM_ID, private: bool = False) -> dict[str, Any]:
    """A `message` event of a channel (`message.channels`) or private channel (`message.groups`)."""
    event: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts, "channel": channel,
                             "team": team, "event_ts": ts, "channel_type": "group" if private else "channel"}
    if files:
        event["files"] = files
        event["subtype"] = "file_share"
        event["upload"] = False
    return event


def message_deleted(channel: str, ts: str, previous: dict[str, Any], *, private: bool = False) -> dict[str, Any]:
    return {"type": "message", "subtype": "message_deleted", "hidden": True, "channel": channel,
            "channel_type": "group" if private else "channel", "deleted_ts": ts, "ts": f"{ts}9",
            "event_ts": f"{ts}9", "previous_message": previous}


def message_changed(channel: str, previous: dict[str, Any], now: dict[str, Any], *,
                    private: bool = False) -> dict[str, Any]:
    return {"type": "message", "subtype": "message_changed", "hidden": True, "channel": channel,
            "channel_type": "group" if private else "channel", "message": now, "previous_message": previous,
            "ts": f"{now['ts']}8", "event_ts": f"{now['ts']}8"}


def file_deleted(file_id: str) -> dict[str, Any]:
    return {"type": "file_deleted", "file_id": file_id, "event_ts": f"{int(time.time())}.000001"}


def channel_deleted(channel: str) -> dict[str, Any]:
    return {"type": "channel_deleted", "channel": channel}


def member_left_channel(user: str, channel: str, *, team: str = TEAM_ID, joined: bool = False) -> dict[str, Any]:
    """`member_left_channel` (or, `joined`, `member_joined_channel`)."""
    kind = "member_joined_channel" if joined else "member_left_channel"
    return {"type": kind, "user": user, "channel": channel, "channel_type": "C", "team": team}


def app_uninstalled() -> dict[str, Any]:
    return {"type": "app_uninstalled"}


def memory_command_body(text: str, *, user: str, channel: str, response_url: str, team: str = TEAM_ID) -> str:
    """A signed-request body of `/search-memory <text>`."""
    payload = command_payload(text, user=user, channel=channel, response_url=response_url, team=team)
    payload["command"] = "/search-memory"
    return urlencode(payload)
