"""Where images to index come from: each source lists `ItemRef`s cheaply, then reads their bytes.

Listing (`refs`) runs in the main process and reads no image, so the ingest can skip ids already
in the dataset before anything is downloaded or decoded. Reading (`read`) runs in the loader's
worker processes; a source is picklable and opens what it needs (an S3 client, the Arrow table)
in the process that reads. A read that fails for one item raises `BadInputError` or `OSError`,
and that item is counted as failed.

- `folder:DIR` walks DIR recursively for common image types; an item's id is its path relative
  to DIR (POSIX form), so re-running an ingest recognises what is already in.
- `hf:NAME[:SPLIT]` reads a Hugging Face dataset with the `datasets` library (NAME on the hub,
  or a folder written by `Dataset.save_to_disk`); the first image column is the image, a
  `prompt`/`text`/`caption` column its text; an item's id is `SPLIT/ROW`.
- `s3://bucket/prefix` lists the images under a prefix (`ingest.s3_source`); the id is the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import BadInputError
from core.urls import FOLDER_SOURCE_PREFIX

if TYPE_CHECKING:
    from core.s3 import S3Connection

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ItemRef:
    """One image to index: its stable id, its text, and where its source finds the bytes."""

    id: str
    text: str = ""
    locator: str | int = ""  # a relative path, an S3 key, a row number: the source's business


class Source(Protocol):
    """What the ingest needs from a source (see the module docstring)."""

    @property
    def name(self) -> str: ...

    def refs(self) -> Iterator[ItemRef]: ...

    def read(self, ref: ItemRef) -> bytes: ...


@dataclass(frozen=True)
class FolderSource:
    root: Path

    @property
    def name(self) -> str:
        return f"{FOLDER_SOURCE_PREFIX}{self.root.resolve()}"

    def refs(self) -> Iterator[ItemRef]:
        paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for path in paths:
            relative = path.relative_to(self.root).as_posix()
            yield ItemRef(id=relative, locator=relative)

    def read(self, ref: ItemRef) -> bytes:
        return (self.root / str(ref.locator)).read_bytes()


TEXT_COLUMNS = ("prompt", "text", "caption")
DEFAULT_HF_SOURCE = "hf:xfh/lexica_6k"


@dataclass(frozen=True)
class _HfTable:
    table: Any  # datasets.Dataset, its image column not decoded
    image_column: str
    text_column: str | None


@dataclass(frozen=True)
class HuggingFaceSource:
    dataset: str
    split: str = "train"

    @property
    def name(self) -> str:
        return f"hf:{self.dataset}"

    @cached_property
    def _loaded(self) -> _HfTable:
        """The table, opened once per process (memory-mapped Arrow: forked workers share it)."""
        try:
            import datasets
        except ImportError:
            raise BadInputError(
                "hf: sources need the ingest extra: pip install 'search-all[ingest]'"
            ) from None
        try:
            if Path(self.dataset).is_dir():
                loaded = datasets.load_from_disk(self.dataset)
                table = loaded[self.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            else:
                table = datasets.load_dataset(self.dataset, split=self.split)
        except Exception as exc:
            raise BadInputError(
                f"cannot load dataset {self.dataset!r} (split {self.split!r}): {exc}"
            ) from exc
        image_columns = [n for n, f in table.features.items() if isinstance(f, datasets.Image)]
        if not image_columns:
            raise BadInputError(f"dataset {self.dataset!r} has no image column")
        text_column = next((c for c in TEXT_COLUMNS if c in table.features), None)
        table = table.cast_column(image_columns[0], datasets.Image(decode=False))
        return _HfTable(table, image_columns[0], text_column)

    def refs(self) -> Iterator[ItemRef]:
        loaded = self._loaded
        rows = len(loaded.table)
        texts = loaded.table[loaded.text_column] if loaded.text_column else [""] * rows
        for row, text in enumerate(texts):
            yield ItemRef(id=f"{self.split}/{row}", text=str(text or ""), locator=row)

    def read(self, ref: ItemRef) -> bytes:
        loaded = self._loaded
        image = loaded.table[int(ref.locator)][loaded.image_column]
        if image is None:
            raise BadInputError(f"row {ref.locator} has no image")
        return image["bytes"] if image.get("bytes") else Path(image["path"]).read_bytes()


def parse_source(spec: str, *, s3: S3Connection | None = None, s3_page_size: int = 1000) -> Source:
    """`folder:DIR` (a plain existing directory works too), `hf:NAME[:SPLIT]` or
    `s3://bucket/prefix` (read through `s3`, the configured endpoint and keys)."""
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        name, _, split = rest.partition(":")
        return HuggingFaceSource(name, split or "train")
    if kind == "s3" and rest.startswith("//"):
        from core.s3 import S3Connection, split_s3_url
        from ingest.s3_source import S3Source

        bucket, prefix = split_s3_url(spec)
        return S3Source(bucket, prefix, s3 or S3Connection(), page_size=s3_page_size)
    if kind == "folder" and rest:
        root = Path(rest).expanduser()
    elif Path(spec).is_dir():
        root = Path(spec)
    else:
        raise BadInputError(f"unknown source {spec!r}: use folder:DIR, hf:NAME[:SPLIT] or s3://bucket/prefix")
    if not root.is_dir():
        raise BadInputError(f"folder {root} does not exist or is not a directory")
    return FolderSource(root)
