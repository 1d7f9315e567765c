"""Where a result image can be fetched from, for a reply or the terminal.

An image uploaded to S3 at ingest has a key; with `[images] public_base_url` set, its URL is
that base plus the key. An image indexed from a local folder keeps its path as a `file://` URL
for the terminal. Otherwise there is no URL and the adapters send the bytes kept in the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from core.store import Hit

FOLDER_SOURCE_PREFIX = "folder:"


@dataclass(frozen=True)
class ImageLocator:
    public_base_url: str | None = None

    def url_for(self, hit: Hit) -> str | None:
        if hit.s3_key and self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{quote(hit.s3_key)}"
        if hit.source.startswith(FOLDER_SOURCE_PREFIX):
            path = Path(hit.source[len(FOLDER_SOURCE_PREFIX):]) / hit.id
            return path.resolve().as_uri()
        return None
