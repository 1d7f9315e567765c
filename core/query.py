"""A search query: weighted terms of any modality, and the text syntax users type.

Syntax of the text form (terminal, Discord, Slack):

    cat + cartoon - photo          three terms: cat (+1), cartoon (+1), photo (-1)
    cat + 0.5*cartoon              weight 0.5 on "cartoon"
    sunset -2*people               weight -2 on "people"
    "rock - paper" + scissors      quotes keep an operator inside a phrase
    sci-fi city                    a hyphen inside a word is not an operator
    castle filter:watercolor       only images whose prompt contains "watercolor"
    castle -filter:"low quality"   only images whose prompt does not contain "low quality"

A `+` or `-` is an operator only at the start or after whitespace. Weights are numbers from
-10 to 10 written as `N*term`. A query needs at least one term with a positive weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from core.errors import EmptyQueryError, QuerySyntaxError
from core.modalities import Modality as MediaModality

# "item": a stored image's embedding ("more like this"), nothing to encode.
Modality = Literal[MediaModality, "item"]
AudioAs = Literal["auto", "sound", "speech"]
MAX_ABS_WEIGHT = 10.0

_OPERATOR_CHARS = str.maketrans("", "", '+-*"')
_WEIGHT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*\*\s*(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One input of a query.

    payload: text for "text"; encoded file bytes for "image" and "audio"; a collection item id
    for "item" ("more like this": its stored embedding is used, nothing is re-encoded).
    label: what to show the user for this term (the text, a file name, "heard: ...").
    transcript: for "audio", what the platform already heard in it (Slack's
    `transcription.preview`); used instead of running our own speech recogniser.
    """

    modality: Modality
    payload: str | bytes
    weight: float = 1.0
    label: str = ""
    transcript: str | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.weight) or abs(self.weight) > MAX_ABS_WEIGHT:
            raise QuerySyntaxError(
                f"weight {self.weight} is out of range: use a number from "
                f"-{MAX_ABS_WEIGHT:g} to {MAX_ABS_WEIGHT:g}"
            )

    def describe(self) -> str:
        sign = "-" if self.weight < 0 else "+"
        magnitude = abs(self.weight)
        weight = "" if magnitude == 1 else f"{magnitude:g}*"
        name = self.label or (self.payload if isinstance(self.payload, str) else self.modality)
        return f"{sign} {weight}{name}"


@dataclass(frozen=True)
class Query:
    """Terms to fuse, and which page of results to return.

    include / exclude: words a result's prompt must (not) contain (see `core.store.base`).
    audio_as: how audio terms are read: "sound" (ImageBind's audio tower), "speech" (the words
    recognised in it, as text), or "auto" (speech when speech is found, else sound).
    """

    terms: tuple[Term, ...]
    limit: int = 5
    offset: int = 0
    include: tuple[str, ...] = field(default=())
    exclude: tuple[str, ...] = field(default=())
    audio_as: AudioAs = "auto"

    def __post_init__(self) -> None:
        if not self.terms:
            raise EmptyQueryError("the query is empty: type some text, or attach an image or audio clip")
        if not any(t.weight > 0 for t in self.terms):
            raise QuerySyntaxError(
                "the query needs at least one term with a positive weight "
                "(a '-' term says what to move away from, not what to find)"
            )
        if self.limit < 1:
            raise QuerySyntaxError("the number of results must be at least 1")
        if self.offset < 0:
            raise QuerySyntaxError("the page offset cannot be negative")

    def describe(self) -> str:
        text = " ".join(t.describe() for t in self.terms)
        text = text[2:] if text.startswith("+ ") else text
        filters = [f'filter:"{w}"' for w in self.include] + [f'-filter:"{w}"' for w in self.exclude]
        return " ".join([text, *filters])


def _split_terms(text: str) -> list[tuple[int, str]]:
    """Split on top-level `+`/`-` operators; returns (sign, raw term) pairs."""
    parts: list[tuple[int, str]] = []
    sign, current, quoted = 1, [], False
    pending_operator = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
            continue
        at_boundary = i == 0 or text[i - 1].isspace()
        if not quoted and ch in "+-" and at_boundary:
            term = "".join(current).strip()
            if term:
                parts.append((sign, term))
            elif pending_operator:
                raise QuerySyntaxError(f"two operators in a row near {text[max(0, i - 10):i + 10]!r}")
            sign = 1 if ch == "+" else -1
            current, pending_operator = [], True
            continue
        current.append(ch)
    if quoted:
        raise QuerySyntaxError('a quote (") is not closed')
    term = "".join(current).strip()
    if term:
        parts.append((sign, term))
    elif pending_operator and parts:
        raise QuerySyntaxError(f"the operator at the end of {text.strip()!r} has no term after it")
    return parts


def parse_text_terms(text: str, *, max_chars: int = 1000, max_terms: int = 16) -> list[Term]:
    """Parse the text syntax into text terms (see the module docstring)."""
    if len(text) > max_chars:
        raise QuerySyntaxError(f"the query is {len(text)} characters long; the limit is {max_chars}")
    if text.strip() and not text.translate(_OPERATOR_CHARS).strip():
        raise EmptyQueryError(f"{text.strip()!r} has operators but no words to search for")
    terms: list[Term] = []
    for sign, raw in _split_terms(text):
        weight = 1.0
        match = _WEIGHT.match(raw)
        if match:
            weight, raw = float(match.group(1)), match.group(2).strip().strip('"').strip()
            if not raw:
                raise QuerySyntaxError(f"the weight {match.group(1)}* has no term after it")
        terms.append(Term("text", raw, sign * weight, label=raw))
    if len(terms) > max_terms:
        raise QuerySyntaxError(f"the query has {len(terms)} terms; the limit is {max_terms}")
    return terms


# `filter:word`, `filter:"two words"`, `-filter:word`, at the start or after whitespace.
_FILTER = re.compile(r'(?:(?<=\s)|^)(-?)filter:(?:"([^"]*)"|(\S+))', re.IGNORECASE)


@dataclass(frozen=True)
class ParsedText:
    """What a typed query says: text terms, and prompt words to require or exclude."""

    terms: tuple[Term, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]


def parse_query_text(text: str, *, max_chars: int = 1000, max_terms: int = 16) -> ParsedText:
    """The text syntax of the module docstring, `filter:` words included."""
    if len(text) > max_chars:
        raise QuerySyntaxError(f"the query is {len(text)} characters long; the limit is {max_chars}")
    include: list[str] = []
    exclude: list[str] = []

    def take(match: re.Match[str]) -> str:
        word = (match.group(2) if match.group(2) is not None else match.group(3)).strip()
        if not word:
            raise QuerySyntaxError("a filter: needs a word after it, like filter:watercolor")
        (exclude if match.group(1) else include).append(word)
        return " "

    rest = _FILTER.sub(take, text)
    terms = parse_text_terms(rest, max_chars=max_chars, max_terms=max_terms) if rest.strip() else []
    return ParsedText(tuple(terms), tuple(include), tuple(exclude))
