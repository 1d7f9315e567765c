"""One ingest at a time per dataset: an exclusive writer lock, taken before the dataset is opened.

DeepLake does not serialise two writers: each checks ids against its own snapshot, so two
ingests of one folder into one dataset write most images twice. The second ingest therefore
refuses at once, naming the holder; it does not wait. An ingest can run for hours, and a
command that sits silently behind another looks hung; a refusal says what is going on, and the
re-run after the first finishes is cheap (it skips what is in). It also behaves the same on
local disks and S3, where a waiting process could not tell a slow holder from a dead one.

- Local dataset `DIR`: `fcntl.flock` on `DIR.lock` beside it. The kernel releases it when the
  holder dies (also by SIGKILL or OOM), so a crash never leaves a stale lock; the file stays.
  A process forked while it is held (a loader worker) closes its copy at once, so the lock
  goes with the ingest itself, not with its last worker.
- `s3://bucket/prefix`: the object `prefix.lock`, created only if absent (`If-None-Match: *`),
  holding the owner (host, pid, a random token) and a heartbeat time, refreshed every
  `HEARTBEAT_S` while the ingest runs and deleted at the end. A lock whose heartbeat is older
  than `STALE_S` belongs to a dead ingest and is taken over.
- `mem://` and other paths: no lock (nothing outside this process can write them).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import StoreError

if TYPE_CHECKING:
    from core.s3.client import S3Connection

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_S = 120.0


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def _describe(owner: dict[str, Any]) -> str:
    since = owner.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, float | int) else "?"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since {when}"


def _refusal(dataset: str, owner: dict[str, Any], where: str) -> StoreError:
    return StoreError(
        f"another ingest is writing to {dataset} ({_describe(owner)}; lock {where}): two at once"
        " would add images twice. Wait for it to finish and run this again (it skips what is in)"
    )


@contextmanager
def writer_lock(dataset: str, s3: S3Connection | None = None) -> Iterator[None]:
    """Hold the dataset's writer lock for the block; `StoreError` at once if another holds it."""
    if dataset.startswith("s3://"):
        if s3 is None:
            raise StoreError(f"cannot lock {dataset}: no S3 connection")
        with _s3_lock(dataset, s3):
            yield
    elif "://" in dataset:
        yield
    else:
        with _file_lock(dataset):
            yield


def lock_path(dataset: str) -> Path:
    path = Path(dataset).expanduser()
    return path.with_name(f"{path.name}.lock")


class _HeldFd:
    """The lock's descriptor, closed in every process forked while it is held (the loader's
    workers): a flock belongs to the open file, so a worker's copy would keep the lock after the
    ingest is killed, and the re-run would be refused until the worker went too."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def close_in_child(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


@contextmanager
def _file_lock(dataset: str) -> Iterator[None]:
    path = lock_path(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    held = _HeldFd(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError(f"cannot lock {dataset} ({path}): {exc}") from exc
            try:
                owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                owner = {}
            raise _refusal(dataset, owner, str(path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        os.register_at_fork(after_in_child=held.close_in_child)
        yield
    finally:
        held.fd = None
        os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


def _s3_lock_key(dataset: str) -> tuple[str, str]:
    from core.s3.client import split_s3_url

    bucket, prefix = split_s3_url(dataset)
    prefix = prefix.strip("/")
    return bucket, f"{prefix}.lock" if prefix else "search-all.lock"


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextmanager
def _s3_lock(dataset: str, s3: S3Connection) -> Iterator[None]:
    client = s3.client()
    bucket, key = _s3_lock_key(dataset)
    where = f"s3://{bucket}/{key}"
    token = secrets.token_hex(8)

    def body() -> bytes:
        return json.dumps({**_owner(), "token": token, "heartbeat": time.time()}).encode()

    def current() -> dict[str, Any] | None:
        try:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        try:
            return json.loads(data)
        except ValueError:
            return {}

    for attempt in range(2):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body(), IfNoneMatch="*")
            break
        except Exception as exc:
            if _error_code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise StoreError(f"cannot take the writer lock {where}: {exc}") from exc
        owner = current() or {}
        age = time.time() - float(owner.get("heartbeat", 0) or 0)
        if attempt or age < STALE_S:
            raise _refusal(dataset, owner, where)
        log.warning("taking over the writer lock %s: its holder (%s) stopped %.0f s ago", where, _describe(owner), age)
        client.delete_object(Bucket=bucket, Key=key)

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=body())
            except Exception:  # noqa: BLE001 - a missed beat is retried; the ingest goes on
                log.warning("cannot refresh the writer lock %s", where, exc_info=True)

    heart = threading.Thread(target=beat, name="writer-lock-heartbeat", daemon=True)
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join()
        try:
            if (current() or {}).get("token") == token:
                client.delete_object(Bucket=bucket, Key=key)
        except Exception:  # noqa: BLE001 - the lock goes stale and is taken over later
            log.warning("cannot release the writer lock %s", where, exc_info=True)
