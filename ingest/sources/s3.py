"""`s3://bucket/prefix` as an ingest source: the images under a prefix, listed page by page.

The prefix is a folder: `s3://photos/2024` lists `2024/...`, not `2024-old/...`. Listing uses
boto3's `list_objects_v2` paginator (`page_size` keys per request), keeps keys with an image
suffix, and reads nothing; an item's id is its key, stable across runs. Each process that reads
builds its own client (`S3Connection.client`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from core.errors import BadInputError
from core.media.kinds import is_image_name
from core.s3.client import S3Connection, describe_s3_error
from ingest.sources.base import ItemRef, count_suffix

_S3_ERROR_MODULES = ("botocore", "boto3", "urllib3")


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """boto3's errors as a `BadInputError` naming `what` failed; anything else is a bug."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith(_S3_ERROR_MODULES):
            raise
        raise BadInputError(f"cannot {what}: {describe_s3_error(exc)}") from exc


@dataclass(frozen=True)
class S3Source:
    bucket: str
    prefix: str
    connection: S3Connection
    page_size: int = 1000  # keys per list request; S3 returns at most 1000
    # keys passed over by their type in the last listing, by suffix ("(no suffix)" for none)
    not_images: Counter[str] = field(default_factory=Counter, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"s3:{self.bucket}/{self.prefix}"

    @property
    def _list_prefix(self) -> str:
        prefix = self.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    def refs(self) -> Iterator[ItemRef]:
        paginator = self.connection.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._list_prefix,
            PaginationConfig={"PageSize": self.page_size},
        )
        with _s3_errors(f"list s3://{self.bucket}/{self._list_prefix}"):
            for page in pages:
                for entry in page.get("Contents", ()):
                    key = entry["Key"]
                    if is_image_name(key):
                        yield ItemRef(id=key, locator=key, version=str(entry.get("ETag", "")).strip('"'))
                    elif not key.endswith("/"):
                        count_suffix(self.not_images, key)

    def read(self, ref: ItemRef) -> bytes:
        with _s3_errors(f"read s3://{self.bucket}/{ref.locator}"):
            response = self.connection.client().get_object(Bucket=self.bucket, Key=str(ref.locator))
            return response["Body"].read()
