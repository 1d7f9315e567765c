"""What every source shares: `ItemRef`, one image to index, and the `Source` protocol.

Listing (`refs`) runs in the main process and reads no image, so the ingest can skip ids already
in the dataset before anything is downloaded or decoded. Reading (`read`) runs in the loader's
worker processes; a source is picklable and opens what it needs (an S3 client, the Arrow table)
in the process that reads. A read that fails for one item raises `BadInputError` or `OSError`,
and that item is counted as failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol


@dataclass(frozen=True)
class ItemRef:
    """One image to index: its stable id, its text, and where its source finds the bytes."""

    id: str
    text: str = ""
    locator: str | int = ""  # a relative path, an S3 key, a row number: the source's business
    version: str = ""  # the content's version when listing tells it (an S3 ETag), else ""


class Source(Protocol):
    """What the ingest needs from a source (see the module docstring)."""

    @property
    def name(self) -> str: ...

    def refs(self) -> Iterator[ItemRef]: ...

    def read(self, ref: ItemRef) -> bytes: ...


def count_suffix(counter: Counter[str], name: str) -> None:
    """Count a file a source passes over by its type, under its suffix."""
    counter[PurePosixPath(name.lower()).suffix or "(no suffix)"] += 1
