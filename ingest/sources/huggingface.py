"""`hf:NAME[:SPLIT]` as an ingest source: a Hugging Face dataset, read with `datasets`.

NAME is a dataset on the hub or a folder written by `Dataset.save_to_disk`; the first image
column is the image, a `prompt`/`text`/`caption` column its text; an item's id is `SPLIT/ROW`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from core.errors import BadInputError
from ingest.sources.base import ItemRef

TEXT_COLUMNS = ("prompt", "text", "caption")


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

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the opened table (a path on this machine): the process that reads,
        a Ray task on another node too, opens its own."""
        return {key: value for key, value in self.__dict__.items() if key != "_loaded"}

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
