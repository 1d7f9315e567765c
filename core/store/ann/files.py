"""Where an index lives: a folder next to a local dataset, or objects next to an S3 one.

The dataset `data/lexica` has its index in `data/lexica.index/`; `s3://bucket/pre/lexica` has
it under `s3://bucket/pre/lexica.index/`, mirrored into a local cache folder (files are
memory-mapped from disk). `mem://` datasets have none (their index lives in memory only).

Files are never changed once written: each save writes new names and then replaces
`meta.json`, which names the files of the current generation; a reader that loaded the
previous generation keeps valid files (the previous generation's files are kept, older ones
deleted). On S3 the objects are uploaded first and `meta.json` last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.config import DEFAULT_CACHE_DIR
from core.errors import StoreError
from core.s3.client import S3Connection, describe_s3_error, split_s3_url

log = logging.getLogger(__name__)

META = "meta.json"
SUFFIX = ".index"


def _cache_root() -> Path:
    return DEFAULT_CACHE_DIR / "index"


class IndexFiles:
    """The index files of one dataset: `local` (the folder files are read from) and, for an
    S3 dataset, the bucket and prefix they are mirrored from."""

    def __init__(self, local: Path, s3: tuple[S3Connection, str, str] | None = None) -> None:
        self.local = local
        self._s3 = s3

    @classmethod
    def for_dataset(cls, path: str, creds: Mapping[str, str] | None = None) -> IndexFiles | None:
        """The index files of the dataset at `path`; None for datasets held in memory."""
        if path.startswith("s3://"):
            bucket, prefix = split_s3_url(path.rstrip("/"))
            creds = creds or {}
            connection = S3Connection(
                endpoint_url=creds.get("endpoint_url"),
                region=creds.get("aws_region"),
                access_key_id=creds.get("aws_access_key_id"),
                secret_access_key=creds.get("aws_secret_access_key"),
            )
            digest = hashlib.sha256(path.encode()).hexdigest()[:16]
            return cls(_cache_root() / digest, (connection, bucket, prefix + SUFFIX))
        if "://" in path and not path.startswith("file://"):
            return None
        local = Path(path.removeprefix("file://")).resolve()
        return cls(local.with_name(local.name + SUFFIX))

    def __str__(self) -> str:
        if self._s3 is not None:
            return f"s3://{self._s3[1]}/{self._s3[2]}"
        return str(self.local)

    def read_meta(self) -> dict[str, Any] | None:
        """The current generation's description; None when there is no index."""
        try:
            if self._s3 is None:
                raw = (self.local / META).read_bytes()
            else:
                connection, bucket, prefix = self._s3
                raw = connection.client().get_object(Bucket=bucket, Key=f"{prefix}/{META}")["Body"].read()
        except FileNotFoundError:
            return None
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"cannot read the search index at {self}: {describe_s3_error(exc)}") from exc
        try:
            return json.loads(raw)
        except ValueError:
            log.warning("the search index at %s has an unreadable %s: it will be rebuilt", self, META)
            return None

    def path(self, name: str) -> Path:
        """The local path of file `name`, downloaded first for an S3 dataset."""
        target = self.local / name
        if self._s3 is not None and not target.exists():
            connection, bucket, prefix = self._s3
            self.local.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(name + ".part")
            try:
                connection.client().download_file(bucket, f"{prefix}/{name}", str(partial))
            except Exception as exc:
                raise StoreError(f"cannot download {name} of the search index at {self}: {describe_s3_error(exc)}") from exc
            os.replace(partial, target)
        return target

    def staging(self) -> Path:
        """The folder new files are written into before `publish`."""
        self.local.mkdir(parents=True, exist_ok=True)
        return self.local

    def publish(self, meta: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Make `meta` (whose files are written in `staging()`) the current generation; delete
        the files neither it nor `previous` names."""
        keep = set(file_names(meta)) | set(file_names(previous or {})) | {META}
        body = json.dumps(meta).encode()
        if self._s3 is None:
            temp = self.local / (META + ".tmp")
            temp.write_bytes(body)
            os.replace(temp, self.local / META)
            for entry in self.local.iterdir():
                if entry.name not in keep and not entry.name.endswith(".tmp"):
                    entry.unlink(missing_ok=True)
            return
        connection, bucket, prefix = self._s3
        client = connection.client()
        try:
            present = {
                item["Key"].rsplit("/", 1)[-1]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
                for item in page.get("Contents", [])
            }
            for name in file_names(meta):
                if name not in present:
                    client.upload_file(str(self.local / name), bucket, f"{prefix}/{name}")
            client.put_object(Bucket=bucket, Key=f"{prefix}/{META}", Body=body)
            for name in present - keep:
                client.delete_object(Bucket=bucket, Key=f"{prefix}/{name}")
        except Exception as exc:
            raise StoreError(f"cannot write the search index to {self}: {describe_s3_error(exc)}") from exc
        for entry in self.local.iterdir():  # the cache keeps what a reader may still map
            if entry.name not in keep:
                entry.unlink(missing_ok=True)


def file_names(meta: Mapping[str, Any]) -> list[str]:
    """The files a generation's description names."""
    names = [meta[key] for key in ("ivf", "slots") if key in meta]
    return names + [chunk[0] for chunk in meta.get("chunks", [])]
