"""Where a result image can be fetched from, for a reply or the terminal.

An image uploaded to S3 at ingest has a key. With `[s3] url_mode = "presigned"` its URL is a
presigned GET for that key (signed locally, valid `presign_seconds`; the bucket can stay
private); otherwise, with `[images] public_base_url` set, that base plus the key. An image
indexed from a local folder keeps its path as a `file://` URL for the terminal. Otherwise there
is no URL and the adapters send the bytes kept in the dataset. While the bucket does not answer
(`core.s3.health`), S3 images get no URL either, so the adapters send the dataset's copy.

boto3 is needed (and imported) only for presigned URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import quote

from core.config import Secrets, Settings
from core.s3.health import S3Health
from core.store.base import FOLDER_SOURCE_PREFIX, Hit


@dataclass(frozen=True)
class ImageLocator:
    public_base_url: str | None = None
    presign: Callable[[str], str] | None = None  # an S3 key -> a time-limited URL
    health: S3Health | None = None  # when set and down, S3 images get no URL

    @classmethod
    def from_settings(cls, settings: Settings, secrets: Secrets) -> ImageLocator:
        """The locator `settings` describe; with a bucket, the S3 client is built now, so a
        missing boto3 fails at startup rather than on the first reply."""
        if not settings.s3.bucket or not (settings.s3.url_mode == "presigned" or settings.images.public_base_url):
            return cls(settings.images.public_base_url)
        from core.s3.client import S3Connection

        connection = S3Connection.from_settings(settings.store, secrets)
        connection.client()
        presign = None
        if settings.s3.url_mode == "presigned":
            presign = partial(connection.presigned_url, settings.s3.bucket, seconds=settings.s3.presign_seconds)
        health = S3Health(connection, settings.s3.bucket) if settings.s3.health_check_seconds > 0 else None
        return cls(settings.images.public_base_url, presign=presign, health=health)

    def url_for(self, hit: Hit) -> str | None:
        if hit.s3_key and self.health is not None and not self.health.up:
            return None
        if hit.s3_key and self.presign is not None:
            return self.presign(hit.s3_key)
        if hit.s3_key and self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{quote(hit.s3_key)}"
        if hit.source.startswith(FOLDER_SOURCE_PREFIX):
            path = Path(hit.source[len(FOLDER_SOURCE_PREFIX):]) / hit.id
            return path.resolve().as_uri()
        return None
