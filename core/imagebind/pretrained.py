"""Resolving, downloading and verifying the ImageBind checkpoint (open_clip's `pretrained.py`).

`resolve_checkpoint(spec, cache_dir=...)` turns a registry entry (`CHECKPOINTS`) into a verified
file on disk: a local path from the config, else the cached copy, else a download (resumable
with HTTP Range, hashed as it streams, renamed into place atomically, guarded by a lock file so
two processes never write the same file). Reading the file into a model is
`core.imagebind.loading`'s job.

Cache layout in `cache_dir`: `<filename>` (the verified checkpoint), `<filename>.sha256` (its
digest in `sha256sum` format, written before the file is renamed into place), `<filename>.verified`
(which file the digest was last computed for: size, mtime, ctime, inode, device, and when the
hashing began), `<filename>.part` (an unfinished download, resumed by the next call) and
`<filename>.lock`.

A cached file is checked on every resolve: its size against the registry, and (with
`verify=True`) its sha256 against the registry or, when the registry has none, the sidecar.
Hashing imagebind_huge reads the whole 4.8 GB file, so a full hash is done once: while the
file's size, mtime_ns, ctime_ns, inode and device still match `<filename>.verified`, its
recorded digest is trusted; any change, or a file modified within `_RACY_NS` of the hash (whose
later changes the filesystem clock might not tell apart), hashes it again. A cached file that
fails the check is deleted and downloaded again (logged as a warning); a local path from the
config (`[model] checkpoint_path`) is never hashed nor deleted: its content is checked when it
loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from tqdm import tqdm

from core.errors import CheckpointError

try:  # POSIX; elsewhere the download runs unlocked.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CHECKPOINTS", "CheckpointSpec", "resolve_checkpoint"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DEFAULT_TIMEOUT_S = 30.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# A file modified this close to (or after) the start of its hash is hashed again next time:
# filesystem timestamps move in coarse ticks, so a later change might keep the same mtime.
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class CheckpointSpec:
    """Where a checkpoint comes from and what it must look like once downloaded.

    `size` (bytes) and `sha256` (lower-case hex) are checked when known; leave them `None` when
    no credible source states them: the download is then checked against the server's
    Content-Length and the digest recorded in the sidecar on first download.
    """

    name: str
    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None


# Size and sha256 of imagebind_huge.pth, as stated by:
# - the Git LFS pointers of two Hugging Face mirrors that re-host the file under the same name,
#   https://huggingface.co/DAMO-NLP-SG/Video-LLaMA-2-7B-Finetuned/commit/9d9519ffac4e48ef6510e829b1a1a643771a4dd0
#   https://huggingface.co/DAMO-NLP-SG/Video-LLaMA-2-13B-Pretrained/commit/cb6d9701fd3d2886da05e0d6fbad1c2599b2d1f7
#   ("oid sha256:d6f6c22b...62157", "size 4803584173");
# - independently, public download scripts that fetch this exact dl.fbaipublicfiles.com URL and
#   pin the same size (an audio-video benchmark's checkpoint table) and the same sha256 (a
#   VideoRAG setup script that checks the digest after downloading from Meta).
# Not checked here: Meta's CDN cannot be reached from this machine.
CHECKPOINTS: Mapping[str, CheckpointSpec] = MappingProxyType(
    {
        "imagebind_huge": CheckpointSpec(
            name="imagebind_huge",
            url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
            filename="imagebind_huge.pth",
            size=4_803_584_173,
            sha256="d6f6c22bedcc90708448d5d2fbb7b2db9c73f505dc89bd0b2e09b23af1b62157",
        ),
    }
)


def resolve_checkpoint(
    spec: CheckpointSpec,
    *,
    cache_dir: Path,
    local_path: Path | None = None,
    url: str | None = None,
    progress: bool = True,
    verify: bool = True,
    timeout: float = _DEFAULT_TIMEOUT_S,
) -> Path:
    """Return the path of a complete, verified copy of the checkpoint, downloading it if needed.

    `local_path` (the config's `[model] checkpoint_path`) wins: it must exist and is returned
    as is; its content is checked when it loads (`core.imagebind.loading`). Otherwise
    `cache_dir/<filename>` is used when it passes the checks (size; with `verify`, the sha256,
    which reads the whole file the first time only: see the module docstring), else it is
    downloaded from `url` (a mirror; default `spec.url`), resuming an earlier partial download.
    `timeout` (seconds) applies to connecting and to each read. Every failure is a
    `CheckpointError` that says what to do.
    """
    if local_path is not None:
        return _check_local(local_path)
    target = cache_dir / spec.filename
    # Fast path, read-only: a verified cache needs neither a lock nor a writable directory.
    if _cached_is_valid(spec, target, verify=verify, repair=False):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot create the checkpoint cache directory {cache_dir}: {exc}. "
            "Set [model] cache_dir to a writable directory or [model] checkpoint_path to a "
            "downloaded copy."
        ) from exc
    with _exclusive_lock(_sibling(target, ".lock")):
        # Another process may have finished (or broken) the file while we waited.
        if _cached_is_valid(spec, target, verify=verify, repair=True):
            return target
        _download(spec, url or spec.url, target, progress=progress, timeout=timeout)
    return target


def _check_local(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(
            f"the checkpoint file {path} (set as [model] checkpoint_path) does not exist. "
            "Fix the path, or remove the setting to download the checkpoint automatically."
        )
    if not path.is_file():
        raise CheckpointError(
            f"the checkpoint path {path} (set as [model] checkpoint_path) is not a file."
        )
    return path


def _cached_is_valid(spec: CheckpointSpec, target: Path, *, verify: bool, repair: bool) -> bool:
    """Whether `target` is a complete, uncorrupted copy.

    With `repair` (only under the lock), a bad copy is deleted, and a copy that has no
    reference digest at all is trusted once and gets its sidecar.
    """
    if not target.is_file():
        return False
    sidecar = _sibling(target, ".sha256")
    size = target.stat().st_size
    if spec.size is not None and size != spec.size:
        return _reject_cached(target, sidecar, f"it has {size} bytes, not {spec.size}", repair)
    recorded = _read_sidecar(sidecar)
    expected = spec.sha256 or recorded
    if expected is None:
        if not repair:
            return False
        _write_sidecar(sidecar, _hash_and_stamp(target), target.name)
        return True
    if not verify:
        return True
    if _stamped_digest(target) == expected:
        return True  # hashed before, and the file has not changed since
    digest = _hash_and_stamp(target)
    if digest != expected:
        return _reject_cached(target, sidecar, f"its sha256 is {digest}, not {expected}", repair)
    if repair and recorded != digest:
        _write_sidecar(sidecar, digest, target.name)
    return True


def _reject_cached(target: Path, sidecar: Path, why: str, repair: bool) -> bool:
    if repair:
        log.warning("cached checkpoint %s is corrupted (%s): downloading it again", target, why)
        target.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        _sibling(target, ".verified").unlink(missing_ok=True)
    return False


def _file_identity(info: os.stat_result) -> dict[str, int]:
    """What changes when a file is rewritten, modified in place, replaced or touched."""
    return {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "ctime_ns": info.st_ctime_ns,
        "ino": info.st_ino,
        "dev": info.st_dev,
    }


def _hash_and_stamp(target: Path) -> str:
    """Hash `target` in full; record in `<name>.verified` which file the digest belongs to.

    The record is skipped when the file changed while it was read or was modified less than
    `_RACY_NS` before the hash began, and (best effort) when the directory is not writable.
    """
    began_ns = time.time_ns()
    before = target.stat()
    digest = _sha256_file(target)
    identity = _file_identity(before)
    if _file_identity(target.stat()) == identity and before.st_mtime_ns < began_ns - _RACY_NS:
        stamp = {"sha256": digest, **identity, "hashed_at_ns": began_ns}
        temporary = _sibling(target, f".verified.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(stamp) + "\n", encoding="ascii")
            os.replace(temporary, _sibling(target, ".verified"))
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            log.debug("could not record the verification of %s: %s", target, exc)
    return digest


def _stamped_digest(target: Path) -> str | None:
    """The digest recorded for `target`, if the file is still the one that was hashed."""
    try:
        stamp = json.loads(_sibling(target, ".verified").read_text(encoding="ascii"))
        identity = _file_identity(target.stat())
        if not isinstance(stamp, dict) or any(stamp.get(k) != v for k, v in identity.items()):
            return None
        if not stamp["mtime_ns"] < stamp["hashed_at_ns"] - _RACY_NS:
            return None
        digest = stamp["sha256"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _download(
    spec: CheckpointSpec, url: str, target: Path, *, progress: bool, timeout: float
) -> None:
    part = _sibling(target, ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if spec.size is not None and offset > spec.size:
        part.unlink()
        offset = 0
    hasher = _sha256_prefix(part, offset)
    if spec.size is not None and offset == spec.size and offset > 0:
        # Every byte arrived before, but the last run stopped before the rename.
        _finish(spec, url, part, target, hasher.hexdigest())
        return

    response, offset, total = _open(spec, url, part, offset, timeout)
    if offset == 0:
        hasher = hashlib.sha256()
    if spec.size is not None and total is not None and total != spec.size:
        response.close()
        raise CheckpointError(
            f"{url} serves {total} bytes, but {spec.name} has {spec.size}: it is not the "
            f"expected file. Check the URL ([model] checkpoint_url) or "
            f"{_manual_hint(spec)}"
        )
    total = total if total is not None else spec.size
    if offset:
        log.info("resuming the download of %s at byte %d", spec.filename, offset)
    else:
        log.info("downloading %s from %s", spec.filename, url)

    received = offset
    bar = tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=spec.filename,
        disable=None if progress else True,  # None: only on a terminal
    )
    try:
        with response, bar, part.open("ab" if offset else "wb") as out:
            for chunk in _read_chunks(response, spec, url):
                out.write(chunk)
                hasher.update(chunk)
                bar.update(len(chunk))
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:  # network errors were turned into CheckpointError already
        raise CheckpointError(
            f"could not write the {spec.name} checkpoint to {part}: {exc}. Free some disk "
            f"space{_size_hint(spec)} or set [model] cache_dir elsewhere, then run again "
            "to resume."
        ) from exc

    if total is not None and received != total:
        if received > total:
            part.unlink(missing_ok=True)
            raise _download_error(spec, url, f"received {received} bytes, expected {total}")
        raise _download_error(
            spec,
            url,
            f"the transfer stopped at {received} of {total} bytes (run again to resume)",
        )
    _finish(spec, url, part, target, hasher.hexdigest())


def _open(
    spec: CheckpointSpec, url: str, part: Path, offset: int, timeout: float
) -> tuple[http.client.HTTPResponse, int, int | None]:
    """Send the request; return the response, the offset it starts at, and the total size.

    A server that ignores `Range` answers 200 with the whole file: the part file is then
    started again from 0. A 416 (our part is at or past the end of what the server has) also
    restarts from 0.
    """
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 416 or offset == 0:
            raise _download_error(spec, url, f"HTTP {exc.code} {exc.reason}") from exc
        log.warning("server refused to resume %s at byte %d: starting again", url, offset)
        part.unlink(missing_ok=True)
        return _open(spec, url, part, 0, timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _download_error(spec, url, _reason(exc)) from exc

    if offset and response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match[1]) != offset:
            response.close()
            raise _download_error(
                spec, url, f"bad Content-Range {response.headers.get('Content-Range')!r}"
            )
        return response, offset, None if match[3] == "*" else int(match[3])
    if offset:
        log.warning("server ignored the Range request for %s: starting again from 0", url)
    length = response.headers.get("Content-Length")
    return response, 0, int(length) if length and length.isdigit() else None


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": "search-all", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    return response


def _read_chunks(
    response: http.client.HTTPResponse, spec: CheckpointSpec, url: str
) -> Iterator[bytes]:
    """Yield the body; a network failure becomes a `CheckpointError` (the part file stays)."""
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise _download_error(
                spec, url, f"{_reason(exc)} (run again to resume the download)"
            ) from exc
        if not chunk:
            return
        yield chunk


def _finish(spec: CheckpointSpec, url: str, part: Path, target: Path, digest: str) -> None:
    """Check the digest, record it, and move the part file into place."""
    if spec.sha256 is not None and digest != spec.sha256:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"the {spec.name} checkpoint downloaded from {url} is corrupted: its sha256 is "
            f"{digest}, expected {spec.sha256}. The download was deleted; run again, or "
            f"{_manual_hint(spec)}"
        )
    # Sidecar first: a crash between the two leaves a sidecar without a file, which is harmless.
    _write_sidecar(_sibling(target, ".sha256"), digest, target.name)
    _sibling(target, ".verified").unlink(missing_ok=True)  # it described the file replaced here
    os.replace(part, target)
    log.info("checkpoint %s saved to %s (sha256 %s)", spec.name, target, digest)


OFFLINE_ROUTE = (
    "Without internet, try everything with the tiny model instead (random weights, for tests and "
    "demos): add --model tiny to the ingest and point it at a folder, folder:DIR (see the README)."
)


def _download_error(spec: CheckpointSpec, url: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"could not download the {spec.name} checkpoint from {url}: {reason}. "
        f"{_manual_hint(spec, capital=True)} {OFFLINE_ROUTE}"
    )


def _manual_hint(spec: CheckpointSpec, *, capital: bool = False) -> str:
    verb = "Download" if capital else "download"
    return (
        f"{verb} {spec.filename} yourself{_size_hint(spec)} and set [model] "
        "checkpoint_path in the config to its path."
    )


def _size_hint(spec: CheckpointSpec) -> str:
    return f" (about {spec.size / 1e9:.1f} GB)" if spec.size else ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return str(exc.reason) or type(exc.reason).__name__
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path`; log when another process holds it first."""
    with path.open("a+b") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process to finish with %s", path.stem)
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _read_sidecar(path: Path) -> str | None:
    try:
        fields = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if fields and re.fullmatch(r"[0-9a-f]{64}", fields[0]):
        return fields[0]
    return None


def _write_sidecar(path: Path, digest: str, filename: str) -> None:
    """Write `<digest>  <filename>` (`sha256sum -c` format) atomically."""
    temporary = _sibling(path, ".tmp")
    temporary.write_text(f"{digest}  {filename}\n", encoding="ascii")
    os.replace(temporary, path)


def _sha256_file(path: Path) -> str:
    return _sha256_prefix(path, path.stat().st_size).hexdigest()


def _sha256_prefix(path: Path, length: int) -> hashlib._Hash:
    """Hash the first `length` bytes of `path` (the part already downloaded)."""
    hasher = hashlib.sha256()
    if length == 0:
        return hasher
    with path.open("rb") as handle:
        _hash_stream(hasher, handle, length)
    return hasher


def _hash_stream(hasher: hashlib._Hash, handle: BinaryIO, length: int) -> None:
    remaining = length
    while remaining > 0:
        block = handle.read(min(_CHUNK * 8, remaining))
        if not block:
            break
        hasher.update(block)
        remaining -= len(block)
