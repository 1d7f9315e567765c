"""The vector store interface: what the search engine needs from a collection of embeddings.

A collection holds one `Record` per image: its embedding (from one model, of one size), the
text that came with it (a prompt or caption), where it came from, and either the JPEG bytes
or the S3 key of the image. `VectorStore` is the interface every backend implements
(`core.store.deeplake_store.DeepLakeStore` is the one we ship); `tests/test_store.py` holds one
contract battery that every implementation must pass.

Filter semantics shared by all backends (`include` / `exclude` of `VectorStore.search`): each
word is matched case-insensitively as a substring of the record's text (a "word" may hold
spaces, "red car" is one phrase); a result must contain every `include` word and none of the
`exclude` words. Filters apply before the top-k is taken, so a filter that one row in a
million passes still returns that row.

This module imports no storage library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from core.errors import StoreError

JPEG_MAGIC = b"\xff\xd8\xff"
# `Record.source` of an image indexed from a local folder: this prefix, then the folder's
# absolute path (the image's id is its path inside the folder).
FOLDER_SOURCE_PREFIX = "folder:"


@dataclass(frozen=True, eq=False)
class Record:
    """One image of the collection, as written by the ingest.

    `eq=False`: records hold numpy arrays, which have no single truth value; compare fields.
    """

    id: str
    embedding: np.ndarray  # float32, shape [dim]
    text: str = ""
    source: str = ""  # "folder:/abs/dir", "hf:xfh/lexica_6k", "s3:bucket/prefix", ...
    image_jpeg: bytes | None = None  # the image itself, when the dataset keeps it
    s3_key: str = ""  # where the image lives in S3, when it does
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Hit:
    """One search result. `score` is the cosine similarity in [-1, 1]; `row` the dataset row."""

    id: str
    score: float
    text: str
    source: str
    s3_key: str
    width: int
    height: int
    row: int


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection is: which model built it, how big it is, how it is searched."""

    path: str
    model_name: str
    dim: int
    rows: int
    version: str  # the backend's version id of the data seen; changes with each commit
    schema_version: int
    search_mode: str  # "exact" (in-memory matrix) or "index" (the backend's own search)
    read_only: bool


@runtime_checkable
class VectorStore(Protocol):
    """A collection of image embeddings that can be appended to and searched.

    Implementations document their thread safety; `DeepLakeStore` allows `search`,
    `existing_ids`, `embedding`, `image_bytes` and `info` from any number of threads at once,
    concurrently with `append` and `refresh`.
    """

    @property
    def info(self) -> CollectionInfo: ...

    def append(self, records: Sequence[Record]) -> int:
        """Validate and write `records` durably (committed when this returns); their count.

        Ids already in the collection are refused (`StoreError`): skip them (`existing_ids`).
        """
        ...

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The subset of `ids` already in the collection (to skip on resume)."""
        ...

    def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        offset: int = 0,
    ) -> list[Hit]:
        """The best `k` rows by cosine similarity after skipping the best `offset`, best first."""
        ...

    def embedding(self, id: str) -> np.ndarray:
        """The embedding stored for `id` (for "more like this"); `KeyError` when unknown."""
        ...

    def embeddings_at(self, rows: Sequence[int]) -> np.ndarray:
        """The stored embeddings of `rows` as a float32 [len(rows), dim] matrix, in that order
        (for folding near-duplicates and "more like this" by row); `StoreError` for a bad row."""
        ...

    def id_at(self, row: int) -> str | None:
        """The id stored at `row` (to name the image "more like this" started from); None when
        there is no such row."""
        ...

    def image_bytes(self, row_or_hit: int | Hit) -> bytes | None:
        """The JPEG bytes stored for a row, unchanged; None when the row keeps no image."""
        ...

    def has_text(self) -> bool:
        """Whether any row has text (a prompt or caption) for filter words to match; a folder's
        images have none. May read the whole text column: ask when a filtered search is empty."""
        ...

    def refresh(self) -> bool:
        """See commits made since opening (by any process); whether rows or version changed."""
        ...

    def close(self) -> None: ...


def normalise_words(words: Sequence[str] | str) -> tuple[str, ...]:
    """Filter words as matched: lowercased, stripped, without empties and duplicates, sorted."""
    if isinstance(words, str):  # a lone string is one word, not a sequence of letters
        words = (words,)
    return tuple(sorted({w.strip().lower() for w in words} - {""}))


def text_passes(lowered_text: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a lowercased text passes normalised `include` / `exclude` words."""
    return all(w in lowered_text for w in include) and not any(w in lowered_text for w in exclude)


def check_search_args(k: int, offset: int) -> None:
    """Reject impossible paging arguments (a programming error, not a user one)."""
    if k < 0 or offset < 0:
        raise ValueError(f"k and offset must be >= 0, got k={k}, offset={offset}")


def unit_query(vector: np.ndarray, dim: int) -> np.ndarray:
    """The query vector as a unit-length float32 [dim] array, or a `StoreError` saying why not."""
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    if q.shape != (dim,):
        raise StoreError(
            f"the query vector has {q.size} values but this collection's embeddings have {dim}:"
            " it was encoded with another model than the one that built the collection"
        )
    if not np.all(np.isfinite(q)):
        raise StoreError("the query vector contains NaN or infinite values")
    norm = float(np.linalg.norm(q))
    if norm == 0.0 or not math.isfinite(norm):
        raise StoreError("the query vector is all zeros: nothing to compare with")
    return q / np.float32(norm)


@dataclass(frozen=True, eq=False)
class SearchRequest:
    """One `VectorStore.search` call as a backend runs it: checked and normalised by
    `search_request`. `eq=False`: `q` is a numpy array."""

    q: np.ndarray  # the query vector, unit length, float32 [dim]
    k: int
    offset: int
    include: tuple[str, ...]  # normalised words (`normalise_words`)
    exclude: tuple[str, ...]


def search_request(
    vector: np.ndarray,
    k: int,
    include: Sequence[str],
    exclude: Sequence[str],
    offset: int,
    dim: int,
) -> SearchRequest:
    """The arguments of `VectorStore.search` checked (`check_search_args`, `unit_query`) and
    normalised (`normalise_words`) for a collection of `dim`-d embeddings."""
    check_search_args(k, offset)
    q = unit_query(vector, dim)
    return SearchRequest(q, k, offset, normalise_words(include), normalise_words(exclude))


def records_matrix(records: Sequence[Record], dim: int) -> np.ndarray:
    """Validate `records` for writing and stack their embeddings into a float32 [n, dim] matrix.

    Checks what a backend would store silently and regret: embedding size, NaN / infinity,
    all-zero vectors, ids (non-empty, unique within the batch), image bytes that are not a JPEG,
    negative sizes. Errors name the record.
    """
    seen: set[str] = set()
    rows = np.empty((len(records), dim), dtype=np.float32)
    for i, rec in enumerate(records):
        if not isinstance(rec.id, str) or not rec.id:
            raise StoreError(f"record {i} has no id (ids must be non-empty strings)")
        if rec.id in seen:
            raise StoreError(f"id {rec.id!r} appears twice in the records to append")
        seen.add(rec.id)
        emb = np.asarray(rec.embedding)
        if emb.shape != (dim,):
            raise StoreError(
                f"record {rec.id!r} has an embedding of shape {list(emb.shape)}, but this"
                f" collection stores [{dim}]: was it encoded with another model?"
            )
        if not np.all(np.isfinite(emb)):
            raise StoreError(f"record {rec.id!r} has NaN or infinite values in its embedding")
        if not np.any(emb):
            raise StoreError(f"record {rec.id!r} has an all-zero embedding")
        if rec.image_jpeg is not None and not rec.image_jpeg.startswith(JPEG_MAGIC):
            raise StoreError(f"record {rec.id!r}: image_jpeg is not JPEG data")
        if rec.width < 0 or rec.height < 0:
            raise StoreError(f"record {rec.id!r} has a negative width or height")
        rows[i] = emb
    return rows
