"""Backfill: a channel's past messages read with `conversations.history`, newest first, a page
at a time, their images handed to channel memory.

After each page the cursor (`response_metadata.next_cursor`) and the counts are saved
(`ChannelMemory.save_backfill`), so a restart resumes where it stopped and `/search-memory
status` shows the progress. Slack answers 429 with `Retry-After` when the method's rate limit
is reached (Tier 3, about 50 calls a minute, for an app built for its own workspace; Slack's
2025 changelog announced far lower limits for apps distributed outside its Marketplace): the
reader waits that long (at most `MAX_WAIT_S`) and asks again, up to `MAX_RATE_LIMITED` times in
a row; any other refusal stops the backfill with the reason saved, for `status` to tell.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from core.memory.memory import ChannelMemory
from core.memory.model import BackfillProgress, Tenant

log = logging.getLogger("search_all.slack.memory")

HISTORY_PAGE = 200  # Slack recommends at most 200 messages a call
MAX_WAIT_S = 60.0
MAX_RATE_LIMITED = 10

IndexPage = Callable[[Sequence[Mapping[str, Any]]], Awaitable[int]]  # messages -> images indexed
Sleep = Callable[[float], Awaitable[None]]


def retry_after(exc: SlackApiError) -> float:
    """Slack's `Retry-After` (seconds) of a 429, within [0, MAX_WAIT_S]; 1 s when absent."""
    headers = getattr(exc.response, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return min(max(float(value), 0.0), MAX_WAIT_S) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0


def history_error(exc: SlackApiError) -> str:
    """Why Slack refused the history, in words the person reading `status` can act on."""
    error = exc.response.get("error", "unknown_error")
    if error in ("not_in_channel", "channel_not_found"):
        return "I am not in this channel any more: invite me, then `/search-memory on N` again"
    if error == "missing_scope":
        return ("the app lacks the channels:history / groups:history scope: add it "
                "(docs/slack-manifest.yaml), reinstall the app, then `/search-memory on N` again")
    return f"Slack refused the channel history ({error})"


async def read_history(
    client: AsyncWebClient,
    memory: ChannelMemory,
    tenant: Tenant,
    channel: str,
    progress: BackfillProgress,
    index_page: IndexPage,
    *,
    sleep: Sleep = asyncio.sleep,
) -> BackfillProgress:
    """Read `channel`'s history from `progress.cursor` until `progress.wanted` messages are read
    or the history ends (or memory is turned off there), indexing each page; the progress saved
    after each page is returned."""
    rate_limited = 0
    while not progress.finished and memory.is_on(tenant, channel):
        want = min(HISTORY_PAGE, progress.wanted - progress.read)
        try:
            page = await client.conversations_history(channel=channel, limit=want, cursor=progress.cursor or None)
        except SlackApiError as exc:
            if exc.response.status_code == 429 and rate_limited < MAX_RATE_LIMITED:
                rate_limited += 1
                await sleep(retry_after(exc))
                continue
            progress = dataclasses.replace(progress, error=history_error(exc))
            await memory.save_backfill(tenant, channel, progress)
            log.warning("backfill of %s in %s stopped: %s", channel, tenant.id, progress.error)
            return progress
        rate_limited = 0
        messages: list[Mapping[str, Any]] = list(page.get("messages") or [])[:want]
        indexed = await index_page(messages) if messages else 0
        cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
        read = progress.read + len(messages)
        progress = dataclasses.replace(
            progress, read=read, indexed=progress.indexed + indexed, cursor=cursor, error="",
            finished=not cursor or not messages or read >= progress.wanted,
        )
        await memory.save_backfill(tenant, channel, progress)
    return progress
