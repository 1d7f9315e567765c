"""Where images to index come from. Each source yields `SourceItem`s with stable ids.

- `folder:DIR` walks DIR recursively for common image types; an item's id is its path relative
  to DIR (POSIX form), so re-running an ingest recognises what is already in.
- `hf:NAME[:SPLIT]` reads a Hugging Face dataset with the `datasets` library (NAME on the hub,
  or a folder written by `Dataset.save_to_disk`); the first image column is the image, a
  `prompt`/`text`/`caption` column its text; an item's id is `SPLIT/ROW`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import BadInputError
from core.urls import FOLDER_SOURCE_PREFIX

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
        return f"{FOLDER_SOURCE_PREFIX}{self.root.resolve()}"

    def items(self) -> Iterator[SourceItem]:
        paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for path in paths:
            yield SourceItem(id=path.relative_to(self.root).as_posix(), text="", read=path.read_bytes)


TEXT_COLUMNS = ("prompt", "text", "caption")
DEFAULT_HF_SOURCE = "hf:xfh/lexica_6k"


@dataclass(frozen=True)
class HuggingFaceSource:
    dataset: str
    split: str = "train"

    @property
    def name(self) -> str:
        return f"hf:{self.dataset}"

    def _load(self):
        try:
            import datasets
        except ImportError:
            raise BadInputError("hf: sources need the ingest extra: pip install 'search-all[ingest]'") from None
        try:
            if Path(self.dataset).is_dir():
                loaded = datasets.load_from_disk(self.dataset)
                table = loaded[self.split] if isinstance(loaded, datasets.DatasetDict) else loaded
            else:
                table = datasets.load_dataset(self.dataset, split=self.split)
        except Exception as exc:
            raise BadInputError(f"cannot load dataset {self.dataset!r} (split {self.split!r}): {exc}") from exc
        image_columns = [n for n, f in table.features.items() if isinstance(f, datasets.Image)]
        if not image_columns:
            raise BadInputError(f"dataset {self.dataset!r} has no image column")
        text_column = next((c for c in TEXT_COLUMNS if c in table.features), None)
        return table.cast_column(image_columns[0], datasets.Image(decode=False)), image_columns[0], text_column

    def items(self) -> Iterator[SourceItem]:
        table, image_column, text_column = self._load()
        for row, record in enumerate(table):
            image = record[image_column]
            data = image["bytes"] if image.get("bytes") else Path(image["path"]).read_bytes()
            text = str(record[text_column] or "") if text_column else ""
            yield SourceItem(id=f"{self.split}/{row}", text=text, read=lambda data=data: data)


Source = FolderSource | HuggingFaceSource


def parse_source(spec: str) -> Source:
    """`folder:DIR` (a plain existing directory works too) or `hf:NAME[:SPLIT]`."""
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        name, _, split = rest.partition(":")
        return HuggingFaceSource(name, split or "train")
    if kind == "folder" and rest:
        root = Path(rest).expanduser()
    elif Path(spec).is_dir():
        root = Path(spec)
    else:
        raise BadInputError(f"unknown source {spec!r}: use folder:DIR or hf:NAME[:SPLIT]")
    if not root.is_dir():
        raise BadInputError(f"folder {root} does not exist or is not a directory")
    return FolderSource(root)
