"""A search result as the chat platforms show it, before any platform's format, and its buttons.

The Discord, Slack and web renderers all start from `build_reply`, so they say the same things:
what was searched (and heard), each image's score, shortened prompt and folded near-duplicates,
why nothing is shown, and which buttons to offer.

A button's id must survive a restart and fit Discord's 100-character custom id (and Slack's
255-character action id), so it carries only a result's dataset row and the rank it was shown
at ("More like #N": its stored embedding is searched, nothing is re-encoded; the rank names it
as the user saw it) or a remembered query's page key and offset ("Next page"). Rows are stable:
the collection is only ever appended to.

    sa:more:<row>:<rank>       more like the image at <row>, shown as result #<rank>
    sa:more:<row>              the same, from a message posted before ids carried the rank
    sa:page:<page key>:<offset>
    sa:mem:<message>/<item>    more like a remembered image of channel memory (the server is
                               the one the button is pressed in; core/memory)

Offsets go to `MAX_DEPTH` (core/service.py): a page that reaches it has no "Next page" and says
so (`DEPTH_NOTICE`); an id with a deeper offset (the id allows six digits) is answered with the
same notice, without a search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.errors import BadInputError
from core.memory.model import SearchScope
from core.service import MAX_DEPTH, ResultItem, SearchResult, SearchService

# ---------------------------------------------------------------------- buttons

PREFIX = "sa:"
_MORE = re.compile(r"^sa:more:(\d{1,12})(?::([1-9]\d{0,5}))?$")
_PAGE = re.compile(r"^sa:page:([0-9a-f]{8,40}):(\d{1,6})$")


@dataclass(frozen=True)
class MoreLikeThis:
    row: int
    rank: int | None = None  # 1-based, across pages; None in ids from before it was carried

    def encode(self) -> str:
        rank = f":{self.rank}" if self.rank is not None else ""
        return f"{PREFIX}more:{self.row}{rank}"


@dataclass(frozen=True)
class NextPage:
    page_key: str
    offset: int

    def encode(self) -> str:
        return f"{PREFIX}page:{self.page_key}:{self.offset}"


@dataclass(frozen=True)
class MoreLikeRemembered:
    """More like a channel-memory image (`ResultItem.id`, "<message>/<item>"), searched within
    what the person pressing may read."""

    item_id: str

    def encode(self) -> str:
        return f"{PREFIX}mem:{self.item_id}"


_MEMORY_MORE = re.compile(r"^sa:mem:([0-9A-Za-z_.-]{1,40}/[0-9A-Za-z_.-]{1,40})$")

Action = MoreLikeThis | NextPage | MoreLikeRemembered


def decode_action(custom_id: str) -> Action | None:
    """The action a button id stands for; None for ids that are not ours or are malformed."""
    if match := _MORE.match(custom_id):
        rank = match.group(2)
        return MoreLikeThis(int(match.group(1)), int(rank) if rank else None)
    if match := _PAGE.match(custom_id):
        return NextPage(match.group(1), int(match.group(2)))
    if match := _MEMORY_MORE.match(custom_id):
        return MoreLikeRemembered(match.group(1))
    return None


async def run_action(service: SearchService, action: Action, limit: int | None = None,
                     scope: SearchScope | None = None) -> SearchResult:
    """Run a button. `scope`: what the person pressing it may see now (a front end with channel
    memory passes it; None is the operator's view: a remembered search's own scope)."""
    if isinstance(action, MoreLikeRemembered):
        if scope is None or scope.tenant is None:
            raise BadInputError("that image is from a server's channel memory: use the button there")
        return await service.more_like_memory(scope, action.item_id, limit)
    if isinstance(action, NextPage) and scope is not None:
        return await service.page(action.page_key, action.offset, channels=scope.channels or frozenset())
    if isinstance(action, MoreLikeThis):
        return await service.more_like_row(action.row, limit, rank=action.rank)
    return await service.page(action.page_key, action.offset)


def next_page_action(result: SearchResult) -> NextPage | None:
    offset = result.next_offset
    return None if offset is None else NextPage(result.page_key, offset)


# ---------------------------------------------------------------------- the reply

DEPTH_NOTICE = f"That is as deep as the results go (the first {MAX_DEPTH}): refine the search to see others."


@dataclass(frozen=True)
class ReplyImage:
    rank: int  # 1-based, across pages
    item: ResultItem
    caption: str  # the prompt, shortened; "" when the image has none
    score: str  # "0.312"
    similar: str  # "+2 similar" or ""
    more: MoreLikeThis | MoreLikeRemembered


@dataclass(frozen=True)
class Reply:
    header: str  # "Results 1-5 for: cat + cartoon"
    heard: str  # "heard: a red car" or ""
    images: list[ReplyImage]
    notice: str  # why there are no (more) images ("no good match ...", how deep results go), else ""
    next_page: NextPage | None
    notes: tuple[str, ...] = ()  # how the request was read ("Showing 10 results per page, not 50: ...")

    def summary_lines(self) -> list[str]:
        """The header, what was heard, the notes and the notice, as plain lines."""
        return [line for line in (self.header, self.heard, *self.notes, self.notice) if line]


def is_web_url(url: str | None) -> bool:
    """Whether `url` is http(s), so a chat platform or a browser can fetch it itself (an S3 URL,
    public or presigned); a file:// path or no URL means the dataset's copy is sent instead."""
    return bool(url) and urlsplit(url).scheme.lower() in ("http", "https")


def item_fields(item: ResultItem) -> dict[str, Any]:
    """A result as numbers and plain values, the same in `search --json` and the web API
    (display strings go beside them, under other keys)."""
    return {
        "id": item.id,
        "score": round(item.score, 6),
        "text": item.text,
        "url": item.url,
        "similar": item.similar,
        "row": item.row,
        "width": item.width,
        "height": item.height,
        **({} if item.memory is None else {"memory": memory_fields(item)}),
    }


def memory_fields(item: ResultItem) -> dict[str, Any]:
    """Where a channel-memory result was posted (platform ids, epoch seconds, the link)."""
    meta = item.memory
    assert meta is not None
    return {"platform": meta.tenant.platform, "server": meta.tenant.id, "channel": meta.channel,
            "message": meta.message, "author": meta.author, "posted_at": meta.posted_at, "link": meta.link}


def result_fields(result: SearchResult) -> dict[str, Any]:
    """What a search was and why it shows what it shows, machine-readable."""
    return {
        "query": result.description,
        "heard": result.heard,
        "best_score": result.best_score,
        "cutoff": result.cutoff,
        "at_depth_limit": result.at_depth_limit,
    }


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0] if " " in text[: limit - 1] else text[: limit - 1]
    return cut.rstrip(" ,;:") + "…"


def build_reply(result: SearchResult, *, caption_chars: int = 200, query_chars: int = 200) -> Reply:
    first = result.offset + 1
    images = [
        ReplyImage(
            rank=first + i,
            item=item,
            caption=shorten(item.text, caption_chars),
            score=f"{item.score:.3f}",
            similar=f"+{item.similar} similar" if item.similar else "",
            more=MoreLikeRemembered(item.id) if item.memory is not None else MoreLikeThis(item.row, first + i),
        )
        for i, item in enumerate(result.items)
    ]
    query = shorten(result.description, query_chars)
    if images:
        last = first + len(images) - 1
        span = f"Result {first}" if last == first else f"Results {first}-{last}"
        header = f"{span} for: {query}"
    else:
        header = f"Search: {query}"
    if result.no_good_match:
        notice = (
            f"No good match: the best score was {result.best_score:.3f}, below the cut-off of "
            f"{result.cutoff:.2f}. Try other words, or an image."
        )
    elif result.at_depth_limit:
        notice = DEPTH_NOTICE
    elif not images:
        notice = "Nothing more to show." if result.offset else "Nothing found: the collection or filter has no images."
    else:
        notice = ""
    return Reply(
        header=header,
        heard=f"heard: {shorten(result.heard, query_chars)}" if result.heard else "",
        images=images,
        notice=notice,
        next_page=next_page_action(result),
        notes=result.notes,
    )
