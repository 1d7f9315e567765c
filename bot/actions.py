"""Buttons under a reply: what they carry, and running them.

A button's id must survive a restart and fit Discord's 100-character custom id, so it carries
only a result's dataset row ("More like this": its stored embedding is searched, nothing is
re-encoded) or a remembered query's page key and offset ("Next page"). Rows are stable: the
collection is only ever appended to.

    sa:more:<row>              more like the image at <row>
    sa:page:<page key>:<offset>
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.service import SearchResult, SearchService

PREFIX = "sa:"
_MORE = re.compile(r"^sa:more:(\d{1,12})$")
_PAGE = re.compile(r"^sa:page:([0-9a-f]{8,40}):(\d{1,6})$")


@dataclass(frozen=True)
class MoreLikeThis:
    row: int

    def encode(self) -> str:
        return f"{PREFIX}more:{self.row}"


@dataclass(frozen=True)
class NextPage:
    page_key: str
    offset: int

    def encode(self) -> str:
        return f"{PREFIX}page:{self.page_key}:{self.offset}"


Action = MoreLikeThis | NextPage


def decode_action(custom_id: str) -> Action | None:
    """The action a button id stands for; None for ids that are not ours or are malformed."""
    if match := _MORE.match(custom_id):
        return MoreLikeThis(int(match.group(1)))
    if match := _PAGE.match(custom_id):
        return NextPage(match.group(1), int(match.group(2)))
    return None


async def run_action(service: SearchService, action: Action, limit: int | None = None) -> SearchResult:
    if isinstance(action, MoreLikeThis):
        return await service.more_like_row(action.row, limit)
    return await service.page(action.page_key, action.offset)


def next_page_action(result: SearchResult) -> NextPage | None:
    offset = result.next_offset
    return None if offset is None else NextPage(result.page_key, offset)
