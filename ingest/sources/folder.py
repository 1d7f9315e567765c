"""`folder:DIR` as an ingest source: DIR walked recursively for common image types.

An item's id is its path relative to DIR (POSIX form), so re-running an ingest recognises what
is already in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.media.kinds import is_image_name
from core.store.base import FOLDER_SOURCE_PREFIX
from ingest.sources.base import ItemRef


@dataclass(frozen=True)
class FolderSource:
    root: Path

    @property
    def name(self) -> str:
        return f"{FOLDER_SOURCE_PREFIX}{self.root.resolve()}"

    def refs(self) -> Iterator[ItemRef]:
        paths = sorted(p for p in self.root.rglob("*") if is_image_name(p.name) and p.is_file())
        for path in paths:
            relative = path.relative_to(self.root).as_posix()
            yield ItemRef(id=relative, locator=relative)

    def read(self, ref: ItemRef) -> bytes:
        return (self.root / str(ref.locator)).read_bytes()
