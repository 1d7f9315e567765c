"""What users type to the Slack bot, read as a query: Slack's markup undone, `limit:N` taken out.

Slack escapes `&`, `<` and `>` in message and command text, writes mentions as `<@U123>`, and
clients may turn straight quotes into curly ones; the query syntax (core.query) wants none of
that. `limit:N` anywhere in the text asks for N results (more than a page holds: that many,
and the reply says so, `bot.common.handle.PageSize`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from core.errors import QuerySyntaxError

_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
_LIMIT = re.compile(r"(?:(?<=\s)|^)limit:(\S*)", re.IGNORECASE)
MAX_LIMIT_DIGITS = 9
_CURLY_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"'})


def unescape(text: str) -> str:
    """Slack's message text as the user typed it."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def escape(text: str) -> str:
    """Text safe to put in Slack `mrkdwn` (no accidental mentions or links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def query_text(text: str) -> str:
    """The query part of a message or command: mentions removed, markup and quotes undone."""
    return unescape(_MENTION.sub(" ", text)).translate(_CURLY_QUOTES).strip()


def split_limit(text: str) -> tuple[str, int | None]:
    """`text` without its `limit:N`, and N (None when not given)."""
    found = _LIMIT.findall(text)
    if not found:
        return text, None
    if len(found) > 1:
        raise QuerySyntaxError("give limit: once, like limit:5")
    value = found[0]
    digits = value.lstrip("0")
    # ASCII digits only ("²" passes isdigit() and fails int()), and not zero.
    if not (value.isascii() and value.isdigit()) or not digits:
        raise QuerySyntaxError(f"limit:{value[:20]} is not a number of results: write it like limit:5")
    # More digits than int() takes (or any message shows): the largest, clamped by the caller.
    limit = int(digits) if len(digits) <= MAX_LIMIT_DIGITS else 10**MAX_LIMIT_DIGITS
    return _LIMIT.sub(" ", text).strip(), limit


def split_choice(text: str, name: str, choices: Sequence[str]) -> tuple[str, str | None]:
    """`text` without its `name:value` (e.g. `source:memory`), and the value, one of `choices`
    (None when not given). Given twice, or with another value: a QuerySyntaxError naming them."""
    pattern = re.compile(rf"(?:(?<=\s)|^){re.escape(name)}:(\S*)", re.IGNORECASE)
    found = pattern.findall(text)
    if not found:
        return text, None
    options = " or ".join(f"{name}:{c}" for c in choices)
    if len(found) > 1:
        raise QuerySyntaxError(f"give {name}: once, like {options}")
    value = found[0].lower()
    if value not in choices:
        raise QuerySyntaxError(f"{name}:{found[0][:20]} is not understood: write {options}")
    return pattern.sub(" ", text).strip(), value
