"""Upload images to S3 from a pool of threads, under keys named by their content.

A key is `<prefix>/<sha256 of the JPEG bytes>.jpg` with `Content-Type: image/jpeg`: uploading
the same image twice (a resumed ingest, a duplicate picture) writes the same object, so an
upload interrupted before its batch was committed costs nothing but the repeat. The boto3 client
is shared by the threads (it is thread-safe); uploads of one batch run while the model encodes.
A re-run puts back the objects rows point to that have vanished from the bucket
(`missing`, `put`; `ingest.pipeline.restore_uploads`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from core.errors import StoreError
from core.s3.client import S3Connection, describe_s3_error

CONTENT_TYPE = "image/jpeg"


def image_key(prefix: str, jpeg: bytes) -> str:
    """The S3 key an image is stored under: content-addressed, with a `.jpg` extension."""
    name = f"{hashlib.sha256(jpeg).hexdigest()}.jpg"
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


@dataclass
class ImageUploader:
    """Puts JPEGs into `bucket`; `submit` returns at once, `keys` waits for a batch."""

    connection: S3Connection
    bucket: str
    prefix: str = "images"
    threads: int = 8
    _pool: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="s3-upload")
        self.connection.client()  # fail now (no boto3, bad endpoint) rather than in a thread

    def submit(self, jpegs: Sequence[bytes]) -> list[Future[str]]:
        """Start uploading `jpegs`; each future gives the key once its object is written."""
        return [self._pool.submit(self._put, data) for data in jpegs]

    @staticmethod
    def keys(futures: Sequence[Future[str]]) -> list[str]:
        """Wait for a batch's uploads; a `StoreError` if any failed (the batch is not written)."""
        return [future.result() for future in futures]

    def upload(self, jpegs: Sequence[bytes]) -> list[str]:
        return self.keys(self.submit(jpegs))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ImageUploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def missing(self, keys: Iterable[str]) -> set[str]:
        """The `keys` with no object in the bucket: each folder of them listed (1,000 keys per
        request), not one HEAD per key."""
        wanted = set(keys)
        folders = {key.rpartition("/")[0] for key in wanted}
        present: set[str] = set()
        paginator = self.connection.client().get_paginator("list_objects_v2")
        for folder in sorted(folders):
            prefix = f"{folder}/" if folder else ""
            try:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                    present.update(entry["Key"] for entry in page.get("Contents", ()))
            except Exception as exc:
                raise StoreError(
                    f"cannot list s3://{self.bucket}/{prefix}: {describe_s3_error(exc)}"
                ) from exc
        return wanted - present

    def put(self, key: str, data: bytes) -> str:
        """Write `data` under `key` (an object a row points to, restored after it vanished)."""
        return self._put(data, key)

    def _put(self, data: bytes, key: str | None = None) -> str:
        key = key or image_key(self.prefix, data)
        try:
            self.connection.client().put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=CONTENT_TYPE
            )
        except Exception as exc:
            raise StoreError(
                f"cannot upload an image to s3://{self.bucket}/{key}: {describe_s3_error(exc)}"
            ) from exc
        return key
