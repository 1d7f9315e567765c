"""A search result as the chat platforms show it, before any platform's format.

The Discord, Slack and web renderers all start from `build_reply`, so they say the same things:
what was searched (and heard), each image's score, shortened prompt and folded near-duplicates,
why nothing is shown, and which buttons to offer.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.actions import MoreLikeThis, NextPage, next_page_action
from core.service import ResultItem, SearchResult


@dataclass(frozen=True)
class ReplyImage:
    rank: int  # 1-based, across pages
    item: ResultItem
    caption: str  # the prompt, shortened; "" when the image has none
    score: str  # "0.312"
    similar: str  # "+2 similar" or ""
    more: MoreLikeThis


@dataclass(frozen=True)
class Reply:
    header: str  # "Results 1-5 for: cat + cartoon"
    heard: str  # "heard: a red car" or ""
    images: list[ReplyImage]
    notice: str  # why there are no images ("no good match ..."), else ""
    next_page: NextPage | None

    def summary_lines(self) -> list[str]:
        """The header, what was heard and the notice, as plain lines."""
        return [line for line in (self.header, self.heard, self.notice) if line]


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
            more=MoreLikeThis(item.row),
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
    )
