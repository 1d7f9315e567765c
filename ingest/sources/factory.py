"""`parse_source`: a source spec (the `search-all ingest` argument) to its `Source`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import BadInputError
from ingest.sources.base import Source
from ingest.sources.folder import FolderSource
from ingest.sources.huggingface import HuggingFaceSource

if TYPE_CHECKING:
    from core.s3.client import S3Connection


def parse_source(
    spec: str,
    *,
    s3: S3Connection | None = None,
    s3_page_size: int = 1000,
    follow_links: bool = False,
    max_file_bytes: int | None = None,
) -> Source:
    """`folder:DIR` (a plain existing directory works too), `hf:NAME[:SPLIT]` or
    `s3://bucket/prefix` (read through `s3`, the configured endpoint and keys). A folder's
    files over `max_file_bytes` are refused unread; links out of it are followed only with
    `follow_links` (`ingest.sources.folder`)."""
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        name, _, split = rest.partition(":")
        return HuggingFaceSource(name, split or "train")
    if kind == "s3" and rest.startswith("//"):
        from core.s3.client import S3Connection, split_s3_url
        from ingest.sources.s3 import S3Source

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
    return FolderSource(root, follow_links=follow_links, max_bytes=max_file_bytes)
