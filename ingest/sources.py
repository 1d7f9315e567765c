"""Where images to index come from. Each source yields `SourceItem`s with stable ids.

`folder:DIR` walks DIR recursively for common image types; an item's id is its path relative
to DIR (POSIX form), so re-running an ingest recognises what is already in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import BadInputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SourceItem:
    id: str
    text: str
    read: Callable[[], bytes]


@dataclass(frozen=True)
class FolderSource:
    root: Path

    @property
    def name(self) -> str:
        return f"folder:{self.root.resolve()}"

    def items(self) -> Iterator[SourceItem]:
        paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for path in paths:
            yield SourceItem(id=path.relative_to(self.root).as_posix(), text="", read=path.read_bytes)


Source = FolderSource


def parse_source(spec: str) -> Source:
    """`folder:DIR` (a plain existing directory works too)."""
    kind, _, rest = spec.partition(":")
    if kind == "folder" and rest:
        root = Path(rest).expanduser()
    elif Path(spec).is_dir():
        root = Path(spec)
    else:
        raise BadInputError(f"unknown source {spec!r}: use folder:DIR")
    if not root.is_dir():
        raise BadInputError(f"folder {root} does not exist or is not a directory")
    return FolderSource(root)
