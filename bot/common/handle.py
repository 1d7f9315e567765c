"""What every front end does with a request before and after the core, in one place.

    admit      the allow-lists, then the per-user rate limit       (`Admission.admit`)
    limit      results per page, within the config and the message  (`Admission.page_size`),
               and the note that says so when it is fewer than asked   (`PageSize.note`)
    inputs     a file's kind and declared size before any download  (`check_file`)
    query      text terms and filters, then one term per attachment (`build_query`)
    failure    the words the user sees, with an incident id         (`user_message`)

The Discord cog, the Slack app, the web page and the CLI all go through these, so they refuse,
clamp and explain in the same words.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from core.config import MediaLimits, Settings
from core.errors import BadInputError, SearchAllError, UnsupportedMediaError
from core.media.kinds import MediaKind, media_kind
from core.media.sizes import check_file_size
from core.query import AudioAs, Query, Term, parse_query_text
from core.service import SearchResult

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- admission


class NotAllowedHereError(SearchAllError):
    """The bot is not enabled in this guild / channel (config allow-lists)."""

    def __init__(self) -> None:
        super().__init__("searching is not enabled in this channel")


class RateLimitedError(SearchAllError):
    """The user searched too often; `retry_after` seconds until the next search is allowed."""

    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"you are searching too fast: try again in {math.ceil(retry_after)} s")


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`burst` searches at once per key, refilled at `per_minute`. `clock` is injectable for tests."""

    def __init__(self, per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000):
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str) -> None:
        """Take one search from `key`'s bucket, or raise `RateLimitedError`."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise RateLimitedError((1.0 - bucket.tokens) / self.rate)
        bucket.tokens -= 1.0

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely (they hold no information)."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


@dataclass(frozen=True)
class PageSize:
    """Results per page, and the note that tells the user when that is fewer than they asked
    for ("" when it is not): every front end says it in these words."""

    value: int
    note: str = ""

    def told(self, result: SearchResult) -> SearchResult:
        """`result` with the note among its notes, for the reply to show."""
        return replace(result, notes=(*result.notes, self.note)) if self.note else result


def page_size(asked: int | None, *, default: int, most: int) -> PageSize:
    """What a page holds for `asked` results (None: the `default`), at most `most`: more than
    that is shown as `most` with a note; fewer than 1 is refused."""
    if asked is None:
        return PageSize(max(1, min(default, most)))
    if asked < 1:
        raise BadInputError(f"the number of results must be 1 or more, not {asked}")
    if asked > most:
        return PageSize(most, f"Showing {most} results per page, not {asked}: a page holds at most {most}.")
    return PageSize(asked)


def on_allow_list(allowed: Sequence[object], *where: object) -> bool:
    """Whether one of `where` (a guild, a channel, its parent; None for "none") is on the list;
    an empty list allows everywhere."""
    return not allowed or any(place is not None and place in allowed for place in where)


class Admission:
    """The door of a chat app: where it answers, how often per user, how many results a page.

    `per_message` is the most results one message of the platform can show (Discord's 10
    embeds, Slack's 50 blocks), so "Next page" starts right after the last result shown.
    """

    def __init__(self, settings: Settings, *, per_message: int, limiter: RateLimiter | None = None):
        self.search = settings.search
        self.per_message = per_message
        self.limiter = limiter or RateLimiter(settings.bot.rate_limit_per_minute, settings.bot.rate_limit_burst)

    def admit(self, user_key: str, *allowed: bool) -> None:
        """Refuse unless every allow-list check passed, then take one search from the user's bucket."""
        if not all(allowed):
            raise NotAllowedHereError()
        self.limiter.check(user_key)

    def page_size(self, asked: int | None) -> PageSize:
        """Results per page: what was asked (or the default), within `[search] max_limit` and
        what one message can show; more than that comes with a note, fewer than 1 is refused."""
        most = max(1, min(self.search.max_limit, self.per_message))
        return page_size(asked, default=self.search.default_limit, most=most)

    def limit(self, asked: int | None) -> int:
        """`page_size(asked)`'s number alone (buttons, which ask for no number)."""
        return self.page_size(asked).value


# ---------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Attachment:
    """A downloaded file of a message."""

    kind: MediaKind
    data: bytes
    filename: str
    transcript: str | None = None  # what the platform heard in an audio clip


@dataclass(frozen=True)
class PendingFile:
    """An attachment that passed the checks that need no download (kind, declared size)."""

    kind: MediaKind
    url: str | None
    filename: str
    transcript: str | None = None


def check_attachment_count(count: int, max_attachments: int) -> None:
    if count > max_attachments:
        raise BadInputError(
            f"{count} files attached; at most {max_attachments} are searched at once — send fewer"
        )


def unsupported(filename: str, content_type: str | None) -> UnsupportedMediaError:
    kind = f" ({content_type})" if content_type else ""
    return UnsupportedMediaError(
        f"{filename}{kind} is not an image or audio clip: attach a JPEG, PNG, WebP or GIF image, "
        "or a voice message / audio file"
    )


def check_file(
    filename: str,
    content_type: str | None,
    size: int | None,
    url: str | None,
    limits: MediaLimits,
    *,
    kind: MediaKind | None = None,
    expect: MediaKind | None = None,
    transcript: str | None = None,
) -> PendingFile:
    """One attachment's kind (given, or from its type and name) and declared size, before any
    download; `expect` insists on a kind (a command's image or audio slot)."""
    kind = kind or media_kind(filename, content_type)
    if kind is None:
        raise unsupported(filename, content_type)
    if expect is not None and kind != expect:
        raise BadInputError(f"{filename} is not {'an image' if expect == 'image' else 'an audio clip'}: "
                            f"attach it as the {kind} option instead")
    if size is not None:
        check_file_size(size, limits, what=filename)
    return PendingFile(kind, url, filename, transcript if kind == "audio" else None)


def build_query(
    text: str | Sequence[str],
    attachments: Sequence[Attachment],
    *,
    limits: MediaLimits,
    limit: int,
    offset: int = 0,
    audio_as: AudioAs = "auto",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Query:
    """The query for a request: the terms and filters of its text (one string, or several each
    parsed on its own, as the CLI's repeated --text), `include`/`exclude` filters given apart,
    then one term per attachment."""
    terms: list[Term] = []
    included, excluded = list(include), list(exclude)
    for part in [text] if isinstance(text, str) else text:
        parsed = parse_query_text(part, max_chars=limits.max_query_chars, max_terms=limits.max_terms)
        terms += parsed.terms
        included += parsed.include
        excluded += parsed.exclude
    for attachment in attachments:
        terms.append(
            Term(attachment.kind, attachment.data, 1.0, label=attachment.filename,
                 transcript=attachment.transcript)
        )
    return Query(
        terms=tuple(terms),
        limit=limit,
        offset=offset,
        include=tuple(included),
        exclude=tuple(excluded),
        audio_as=audio_as,
    )


# ---------------------------------------------------------------------- failures


def user_message(exc: BaseException) -> str:
    """The reply for `exc`; unexpected errors are logged with an id the user can quote.

    A `SearchAllError` carries a message written for the user and is shown as it is; anything
    else is a bug: the user gets a short apology with an incident id, the log the traceback.
    """
    if isinstance(exc, SearchAllError):
        text = str(exc)
        first_word = text.split(" ", 1)[0]
        # "the query is empty" -> "The query is empty"; a file name ("photo.png is ...") stays.
        return text[:1].upper() + text[1:] if first_word.isalpha() else text
    incident = uuid.uuid4().hex[:8]
    log.error("internal error %s", incident, exc_info=exc)
    return f"Something went wrong on our side (incident {incident}); please try again later."
