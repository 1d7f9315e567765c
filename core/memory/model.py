"""Channel memory's value types: who owns an image, where it was posted, and who may see it.

A *tenant* is one Discord server (guild) or one Slack workspace (team): memory never crosses
tenants. Ids are the platform's own, as strings (Discord snowflakes, Slack `T…`/`C…`/`U…`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from core.store.base import Hit

Source = Literal["collection", "memory", "both"]
SOURCES: tuple[Source, ...] = ("collection", "memory", "both")
Platform = Literal["discord", "slack"]
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_id(value: str, what: str) -> str:
    """A platform id as used in paths and SQL: letters, digits, `_.-`, at most 64; else ValueError."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what} {value!r} is not a platform id (letters, digits, _ . -)")
    return value


@dataclass(frozen=True, order=True)
class Tenant:
    """One server or workspace: `Tenant("discord", "81384788765712384")`."""

    platform: Platform
    id: str

    def __post_init__(self) -> None:
        if self.platform not in ("discord", "slack"):
            raise ValueError(f"unknown platform {self.platform!r}")
        check_id(self.id, "tenant id")

    @property
    def key(self) -> str:
        """`discord-81384788765712384`: the tenant's folder name and its key in the registry."""
        return f"{self.platform}-{self.id}"


@dataclass(frozen=True)
class PostedImage:
    """One image of one message, as a front end hands it to `ChannelMemory.index`.

    `item` tells the images of one message apart (Discord: the attachment id; Slack: the file
    id); `data` is the file as downloaded (decoded within the media limits, never stored as is:
    a bounded, metadata-free JPEG thumbnail is kept). `text` is the message's text, matched by
    `filter:` words.
    """

    tenant: Tenant
    channel: str
    message: str
    item: str
    author: str
    posted_at: float  # seconds since the epoch (UTC)
    link: str  # back to the message (Discord jump URL, Slack permalink)
    data: bytes
    text: str = ""

    @property
    def record_id(self) -> str:
        return f"{self.message}/{self.item}"


@dataclass(frozen=True)
class MemoryMeta:
    """Where a remembered image came from: what a result shows under it."""

    tenant: Tenant
    channel: str
    message: str
    item: str
    author: str
    posted_at: float
    link: str


@dataclass(frozen=True)
class MemoryHit(Hit):
    """A `Hit` from channel memory; `row` is -1 (rows of a tenant's dataset move on deletion:
    a memory image is named by `meta.tenant` and `id`, never by row)."""

    meta: MemoryMeta | None = None


@dataclass(frozen=True)
class SearchScope:
    """What one search may see.

    `source`: the shared collection, the memory of `tenant`, or both (merged by score).
    `channels`: the channels of `tenant` the person asking may read, computed by the front end
    at query time; `None` means every channel (the operator's CLI, no permission model). An
    empty set finds nothing in memory. Memory sources need a tenant.
    """

    source: Source = "collection"
    tenant: Tenant | None = None
    channels: frozenset[str] | None = field(default=frozenset())

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.source != "collection" and self.tenant is None:
            raise ValueError("a search of channel memory needs a tenant (server or workspace)")

    @property
    def uses_collection(self) -> bool:
        return self.source in ("collection", "both")

    @property
    def uses_memory(self) -> bool:
        return self.source in ("memory", "both")

    def narrowed(self, channels: frozenset[str] | None) -> SearchScope:
        """This scope limited to `channels` too (a button pressed by someone else: what both may read)."""
        if channels is None:
            return self
        mine = channels if self.channels is None else self.channels & channels
        return SearchScope(self.source, self.tenant, frozenset(mine))


COLLECTION = SearchScope()


@dataclass(frozen=True)
class BackfillProgress:
    """How far reading a channel's history has come (resumable from `cursor`)."""

    wanted: int  # messages to read, at most
    read: int  # messages read so far
    indexed: int  # images indexed from them
    cursor: str  # the oldest message read: the next page starts before it ("" at the start)
    finished: bool
    error: str = ""  # why it stopped, when it did not finish


@dataclass(frozen=True)
class ChannelStatus:
    """What `/memory status` says about a channel."""

    tenant: Tenant
    channel: str
    on: bool
    since: float | None  # when memory was turned on (epoch seconds); None when never
    by: str  # who turned it on
    images: int  # images remembered from this channel
    oldest: float | None  # the posting time of the oldest remembered image
    backfill: BackfillProgress | None
