"""Tests of core.imagebind.pretrained and core.imagebind.loading against a real HTTP server on 127.0.0.1.

The server serves a checkpoint the test writes itself (a tiny module shaped like ImageBind,
plus a "depth" tower that loading must drop), honours `Range: bytes=N-` unless told not to,
can cut a transfer short, and records every request.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from core.config import MediaLimits, ModelSettings
from core.encoder import Encoder
from core.errors import CheckpointError, ModelError
from core.imagebind import loading
from core.imagebind import pretrained as ckpt
from core.imagebind.loading import (
    drop_pages,
    is_file_backed,
    load_into,
    load_state_dict_file,
    modality_prefixes,
    select_keys,
)
from core.imagebind.model import LOOKUP_TABLES, build_imagebind
from core.imagebind.pretrained import CHECKPOINTS, CheckpointSpec, resolve_checkpoint

MODALITIES = ("text", "vision", "audio")
FILENAME = "tiny_imagebind.pth"


class Preprocessor(nn.Module):
    """A projection plus a persistent buffer, like ImageBind's text `mask`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4, width)
        self.register_buffer("mask", torch.ones(2, 2).triu())


class TinyImageBind(nn.Module):
    """The key layout of ImageBind (four parts, one sub-module per modality), at toy size."""

    def __init__(self, modalities: tuple[str, ...] = MODALITIES, width: int = 8) -> None:
        super().__init__()
        self.modality_preprocessors = nn.ModuleDict({m: Preprocessor(width) for m in modalities})
        self.modality_trunks = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width)) for m in modalities}
        )
        self.modality_heads = nn.ModuleDict({m: nn.Linear(width, 3) for m in modalities})
        self.modality_postprocessors = nn.ModuleDict({m: nn.Identity() for m in modalities})


def full_checkpoint() -> dict[str, torch.Tensor]:
    """Our three towers with random weights, plus a depth tower as the official file has."""
    torch.manual_seed(0)
    return TinyImageBind((*MODALITIES, "depth")).state_dict()


def serialise(obj: object, *, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The local server


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # send the full Content-Length, then close after N bytes
    requests: list[dict[str, str | None]] = field(default_factory=list)


class FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ServerState) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.state = state


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append({"path": self.path, "range": self.headers.get("Range")})
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and state.honour_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if state.cut_after is not None:
            body = body[: state.cut_after]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Served:
    state: ServerState
    base_url: str
    payload: bytes

    def spec(self, *, size: int | None = None, sha256: str | None = None) -> CheckpointSpec:
        return CheckpointSpec(
            name="tiny",
            url=f"{self.base_url}/{FILENAME}",
            filename=FILENAME,
            size=size,
            sha256=sha256,
        )

    def gets(self) -> list[dict[str, str | None]]:
        return [r for r in self.state.requests if r["path"] == f"/{FILENAME}"]


@pytest.fixture
def served() -> Iterator[Served]:
    payload = serialise(full_checkpoint())
    state = ServerState(files={f"/{FILENAME}": payload})
    server = FileServer(state)
    # A short poll interval keeps shutdown() fast.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Served(state, f"http://127.0.0.1:{server.server_port}", payload)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_entry_is_well_formed() -> None:
    spec = CHECKPOINTS["imagebind_huge"]
    assert spec.url == "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
    assert spec.filename == "imagebind_huge.pth"
    assert spec.size is None or spec.size > 4_000_000_000
    assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
    with pytest.raises(TypeError):
        CHECKPOINTS["other"] = spec  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Downloading


def test_fresh_download_verify_and_load(served: Served, tmp_path: Path) -> None:
    spec = served.spec(size=len(served.payload), sha256=sha256(served.payload))

    path = resolve_checkpoint(spec, cache_dir=tmp_path / "cache", progress=False)

    assert path == tmp_path / "cache" / FILENAME
    assert path.read_bytes() == served.payload
    assert (tmp_path / "cache" / f"{FILENAME}.sha256").read_text() == (
        f"{sha256(served.payload)}  {FILENAME}\n"
    )
    assert not (tmp_path / "cache" / f"{FILENAME}.part").exists()
    assert [r["range"] for r in served.gets()] == [None]

    state_dict = load_state_dict_file(path, keep_prefixes=modality_prefixes(MODALITIES))
    assert not any(".depth." in key for key in state_dict)
    with torch.device("meta"):
        model = TinyImageBind()
    load_into(model, state_dict)
    expected = full_checkpoint()
    for key, value in model.state_dict().items():
        assert not value.is_meta
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)

    # A second resolve uses the cache: no request.
    assert resolve_checkpoint(spec, cache_dir=tmp_path / "cache", progress=False) == path
    assert len(served.gets()) == 1


def test_download_without_known_hash_records_sidecar_with_progress_bar(
    served: Served, tmp_path: Path
) -> None:
    path = resolve_checkpoint(served.spec(), cache_dir=tmp_path, progress=True)
    assert path.read_bytes() == served.payload
    assert (tmp_path / f"{FILENAME}.sha256").read_text().split()[0] == sha256(served.payload)


def test_resume_from_partial_file(served: Served, tmp_path: Path) -> None:
    half = len(served.payload) // 2
    (tmp_path / f"{FILENAME}.part").write_bytes(served.payload[:half])

    path = resolve_checkpoint(
        served.spec(sha256=sha256(served.payload)), cache_dir=tmp_path, progress=False
    )

    assert [r["range"] for r in served.gets()] == [f"bytes={half}-"]
    assert path.read_bytes() == served.payload


def test_interrupted_transfer_keeps_part_and_next_call_resumes(
    served: Served, tmp_path: Path
) -> None:
    served.state.cut_after = 1000
    spec = served.spec(sha256=sha256(served.payload))
    stopped = r"stopped at 1000 of \d+ bytes \(run again to resume\)"
    with pytest.raises(CheckpointError, match=stopped):
        resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    assert (tmp_path / f"{FILENAME}.part").stat().st_size == 1000
    assert not (tmp_path / FILENAME).exists()

    served.state.cut_after = None
    path = resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    assert [r["range"] for r in served.gets()] == [None, "bytes=1000-"]
    assert path.read_bytes() == served.payload


def test_server_ignoring_range_restarts_from_zero(served: Served, tmp_path: Path) -> None:
    served.state.honour_range = False
    # A wrong prefix: appending to it would corrupt the file, restarting must not.
    (tmp_path / f"{FILENAME}.part").write_bytes(b"x" * 500)

    path = resolve_checkpoint(
        served.spec(sha256=sha256(served.payload)), cache_dir=tmp_path, progress=False
    )

    assert [r["range"] for r in served.gets()] == ["bytes=500-"]
    assert path.read_bytes() == served.payload


def test_part_larger_than_server_file_restarts_after_416(served: Served, tmp_path: Path) -> None:
    (tmp_path / f"{FILENAME}.part").write_bytes(served.payload + b"junk")

    path = resolve_checkpoint(served.spec(), cache_dir=tmp_path, progress=False)

    assert [r["range"] for r in served.gets()] == [f"bytes={len(served.payload) + 4}-", None]
    assert path.read_bytes() == served.payload


def test_complete_part_is_finished_without_request(served: Served, tmp_path: Path) -> None:
    (tmp_path / f"{FILENAME}.part").write_bytes(served.payload)
    spec = served.spec(size=len(served.payload), sha256=sha256(served.payload))

    path = resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)

    assert served.gets() == []
    assert path.read_bytes() == served.payload


def test_sha256_mismatch_leaves_no_file(served: Served, tmp_path: Path) -> None:
    spec = served.spec(sha256="0" * 64)
    with pytest.raises(CheckpointError, match=r"corrupted: its sha256 is .* expected 0{64}"):
        resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{FILENAME}.lock"]


def test_size_announced_by_server_differs_from_registry(served: Served, tmp_path: Path) -> None:
    spec = served.spec(size=len(served.payload) + 1)
    with pytest.raises(CheckpointError, match="not the expected file"):
        resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / FILENAME).exists()


def test_404_names_the_url_and_the_way_out(served: Served, tmp_path: Path) -> None:
    url = f"{served.base_url}/missing.pth"
    with pytest.raises(CheckpointError) as caught:
        resolve_checkpoint(served.spec(), cache_dir=tmp_path, url=url, progress=False)
    message = str(caught.value)
    assert url in message
    assert "404" in message
    assert "checkpoint_path" in message


def test_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and now refuses
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{FILENAME}"
    spec = CheckpointSpec(name="tiny", url=url, filename=FILENAME)
    with pytest.raises(CheckpointError, match=f"could not download .* from {re.escape(url)}") as failed:
        resolve_checkpoint(spec, cache_dir=tmp_path, progress=False, timeout=5)
    assert "--model tiny" in str(failed.value) and "folder:DIR" in str(failed.value)  # the offline route


def test_corrupted_cache_is_downloaded_again(served: Served, tmp_path: Path) -> None:
    """Documented choice: a cached file that fails its sidecar hash is replaced."""
    spec = served.spec()  # no registry hash: the sidecar is the reference
    path = resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))

    assert resolve_checkpoint(spec, cache_dir=tmp_path, progress=False) == path
    assert path.read_bytes() == served.payload
    assert len(served.gets()) == 2


def test_truncated_cache_is_downloaded_again(served: Served, tmp_path: Path) -> None:
    spec = served.spec(size=len(served.payload))
    path = resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    path.write_bytes(served.payload[:100])

    # Even without hashing, the size check catches it.
    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False, verify=False)
    assert path.read_bytes() == served.payload
    assert len(served.gets()) == 2


def test_second_resolver_waits_for_the_lock_and_reuses_the_result(
    served: Served, tmp_path: Path
) -> None:
    """While another process holds the lock, a resolver waits, then finds the file done."""
    fcntl = pytest.importorskip("fcntl")
    spec = served.spec(sha256=sha256(served.payload))
    waiting = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for another process" in record.getMessage():
                waiting.set()

    handler = Signal()
    logger = logging.getLogger(ckpt.__name__)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    result: list[Path | BaseException] = []

    def resolve() -> None:
        try:
            result.append(resolve_checkpoint(spec, cache_dir=tmp_path, progress=False))
        except BaseException as exc:
            result.append(exc)

    try:
        with (tmp_path / f"{FILENAME}.lock").open("a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            thread = threading.Thread(target=resolve)
            thread.start()
            assert waiting.wait(timeout=10)
            # "The other process" finishes its download while the resolver waits.
            (tmp_path / FILENAME).write_bytes(served.payload)
            fcntl.flock(lock, fcntl.LOCK_UN)
        thread.join(timeout=10)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)

    assert result == [tmp_path / FILENAME]
    assert served.gets() == []


def test_local_path(tmp_path: Path, served: Served) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(CheckpointError, match=r"nowhere\.pth .* does not exist"):
        resolve_checkpoint(served.spec(), cache_dir=tmp_path, local_path=missing)
    with pytest.raises(CheckpointError, match="not a file"):
        resolve_checkpoint(served.spec(), cache_dir=tmp_path, local_path=tmp_path)

    given = tmp_path / "mine.pth"
    given.write_bytes(served.payload)
    assert resolve_checkpoint(served.spec(), cache_dir=tmp_path, local_path=given) == given
    assert served.state.requests == []


# --------------------------------------------------------------------------------------------
# Verifying a cached file once, not on every start


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files fully hashed from now on (the real hash runs; the seam only counts)."""
    calls: list[Path] = []
    real = ckpt._sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(ckpt, "_sha256_file", counting)
    return calls


def set_age(path: Path, seconds: float) -> None:
    """Give `path` the mtime of a file last written `seconds` ago (as a real download is)."""
    then = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(then, then))


def cached_copy(served: Served, cache: Path, *, age: float = 3600) -> tuple[Path, CheckpointSpec]:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / FILENAME
    path.write_bytes(served.payload)
    set_age(path, age)
    return path, served.spec(size=len(served.payload), sha256=sha256(served.payload))


def test_unchanged_cached_file_is_hashed_once(
    served: Served, tmp_path: Path, hashed: list[Path]
) -> None:
    path, spec = cached_copy(served, tmp_path)

    for _ in range(3):
        assert resolve_checkpoint(spec, cache_dir=tmp_path, progress=False) == path

    assert hashed == [path]
    stamp = json.loads((tmp_path / f"{FILENAME}.verified").read_text())
    assert stamp["sha256"] == sha256(served.payload)
    assert stamp["size"] == len(served.payload)
    assert stamp["mtime_ns"] == path.stat().st_mtime_ns
    assert served.gets() == []


def test_file_modified_in_place_with_same_size_is_hashed_again_and_replaced(
    served: Served, tmp_path: Path, hashed: list[Path]
) -> None:
    path, spec = cached_copy(served, tmp_path)
    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    assert len(hashed) == 1

    with path.open("r+b") as handle:  # one flipped byte, same size
        handle.seek(len(served.payload) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    set_age(path, 1800)  # a new mtime, and old enough not to look "just written"
    assert path.stat().st_size == len(served.payload)

    assert resolve_checkpoint(spec, cache_dir=tmp_path, progress=False) == path

    assert len(hashed) >= 2  # the change was noticed and the file read again
    assert path.read_bytes() == served.payload  # rejected, downloaded again
    assert len(served.gets()) == 1


def test_restoring_the_old_mtime_does_not_hide_a_change(
    served: Served, tmp_path: Path, hashed: list[Path]
) -> None:
    """`touch -d` can restore an mtime, not a ctime: the change is still seen."""
    path, spec = cached_copy(served, tmp_path)
    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    old = path.stat()

    damaged = bytearray(served.payload)
    damaged[10] ^= 0xFF
    with path.open("r+b") as handle:
        handle.write(bytes(damaged))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    while path.stat().st_ctime_ns == old.st_ctime_ns:  # still the clock tick of the record
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert path.stat().st_mtime_ns == old.st_mtime_ns

    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    assert len(hashed) >= 2
    assert path.read_bytes() == served.payload


def test_a_replaced_file_is_hashed_again(
    served: Served, tmp_path: Path, hashed: list[Path]
) -> None:
    path, spec = cached_copy(served, tmp_path)
    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    mtime = path.stat().st_mtime_ns
    copy = tmp_path / "copy.tmp"
    copy.write_bytes(served.payload)
    os.utime(copy, ns=(mtime, mtime))
    os.replace(copy, path)  # same bytes, size and mtime; another inode

    assert resolve_checkpoint(spec, cache_dir=tmp_path, progress=False) == path
    assert hashed == [path, path]
    assert served.gets() == []


def test_a_just_written_file_is_not_trusted_from_its_record(
    served: Served, tmp_path: Path, hashed: list[Path]
) -> None:
    """A change made within the filesystem's clock tick of the hash could keep its mtime, so a
    file whose mtime is not clearly older than the hash is not vouched for (here: in the future,
    which no delay of a loaded machine can turn into "older")."""
    path, spec = cached_copy(served, tmp_path, age=-60)

    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)

    assert hashed == [path, path]
    assert not (tmp_path / f"{FILENAME}.verified").exists()


def test_an_unreadable_record_means_hashing_again(
    served: Served, tmp_path: Path, hashed: list[Path]
) -> None:
    path, spec = cached_copy(served, tmp_path)
    record = tmp_path / f"{FILENAME}.verified"
    for content in ("not json", "[1, 2]", '{"sha256": 5}'):
        record.write_text(content)
        assert resolve_checkpoint(spec, cache_dir=tmp_path, progress=False) == path
    assert len(hashed) == 3
    assert json.loads(record.read_text())["sha256"] == sha256(served.payload)
    assert resolve_checkpoint(spec, cache_dir=tmp_path, progress=False) == path
    assert len(hashed) == 3


def test_a_record_for_another_digest_is_not_trusted(
    served: Served, tmp_path: Path, hashed: list[Path]
) -> None:
    """The record vouches for one digest; a registry that expects another hashes again."""
    path, spec = cached_copy(served, tmp_path)
    resolve_checkpoint(spec, cache_dir=tmp_path, progress=False)
    other = served.spec(size=len(served.payload), sha256="0" * 64)

    with pytest.raises(CheckpointError):
        resolve_checkpoint(other, cache_dir=tmp_path, progress=False)
    assert len(hashed) >= 2


# --------------------------------------------------------------------------------------------
# Loading


def test_select_keys_is_pure_and_keeps_order() -> None:
    state_dict = {
        "modality_trunks.text.a": torch.zeros(1),
        "modality_trunks.depth.a": torch.zeros(1),
        "modality_heads.vision.b": torch.zeros(1),
        "modality_trunks.textual.c": torch.zeros(1),  # not "text."
    }
    before = dict(state_dict)
    selected = select_keys(state_dict, ["modality_heads.vision.", "modality_trunks.text."])
    assert list(selected) == ["modality_trunks.text.a", "modality_heads.vision.b"]
    assert state_dict == before
    assert select_keys(state_dict, []) == {}
    assert modality_prefixes(["audio"]) == (
        "modality_preprocessors.audio.",
        "modality_trunks.audio.",
        "modality_heads.audio.",
        "modality_postprocessors.audio.",
    )


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_checkpoint_is_unwrapped(tmp_path: Path, wrapper: str) -> None:
    path = tmp_path / "wrapped.pth"
    path.write_bytes(serialise({wrapper: full_checkpoint(), "epoch": 3}))
    assert load_state_dict_file(path).keys() == full_checkpoint().keys()


def test_legacy_non_zip_checkpoint_loads_without_mmap(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    path.write_bytes(serialise(full_checkpoint(), legacy=True))
    loaded = load_state_dict_file(path, keep_prefixes=modality_prefixes(["text"]))
    assert loaded and all(".text." in key for key in loaded)


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint", b"", None],
    ids=["garbage", "empty", "truncated"],
)
def test_corrupt_file_raises(tmp_path: Path, content: bytes | None) -> None:
    data = serialise(full_checkpoint())
    path = tmp_path / "bad.pth"
    path.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_state_dict_file(path)


def test_not_a_state_dict_or_wrong_model(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    path.write_bytes(serialise([torch.zeros(1)]))
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_state_dict_file(path)
    path.write_bytes(serialise({"encoder.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="not an ImageBind checkpoint"):
        load_state_dict_file(path, keep_prefixes=modality_prefixes(MODALITIES))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")


def mapped_rss_kb(path: Path) -> int:
    """Resident kB of this process's memory mappings of `path` (Linux's /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", fields[0]):
            inside = fields[-1] == str(path)
        elif inside and fields and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def test_cast_while_loading_converts_floats_only(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(serialise(full_checkpoint()))
    expected = select_keys(full_checkpoint(), modality_prefixes(MODALITIES))

    loaded = load_state_dict_file(
        path, keep_prefixes=modality_prefixes(MODALITIES), dtype=torch.bfloat16
    )

    assert loaded.keys() == expected.keys()
    for key, value in loaded.items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, expected[key].to(torch.bfloat16))
    mixed = {"w": torch.ones(2), "steps": torch.arange(3), "half": torch.ones(2, dtype=torch.bfloat16)}
    cast = loading.cast_state_dict(mixed, torch.bfloat16)
    assert cast["w"].dtype == torch.bfloat16 and cast["steps"] is mixed["steps"]
    assert cast["half"] is mixed["half"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_cast_while_loading_hands_the_file_pages_back(tmp_path: Path) -> None:
    """bf16 from an fp32 file: the file's pages do not stay resident next to the copy."""
    torch.manual_seed(0)
    weights = {
        "modality_trunks.text.weight": torch.randn(2048, 2048),  # 16 MiB of fp32
        "modality_trunks.text.steps": torch.arange(5),  # not cast: keeps the mapping alive
    }
    path = tmp_path / "fp32.pth"
    path.write_bytes(serialise(weights))

    plain = load_state_dict_file(path)
    kept = loading.cast_state_dict(plain, torch.bfloat16)  # reads every page, releases none
    assert mapped_rss_kb(path) > 15 * 1024
    del plain, kept

    loaded = load_state_dict_file(path, dtype=torch.bfloat16)
    assert mapped_rss_kb(path) < 1024  # the file is still mapped, its pages are not resident
    assert torch.equal(
        loaded["modality_trunks.text.weight"], weights["modality_trunks.text.weight"].to(torch.bfloat16)
    )
    assert torch.equal(loaded["modality_trunks.text.steps"], torch.arange(5))


def test_strict_load_failure_lists_keys() -> None:
    state_dict = select_keys(full_checkpoint(), modality_prefixes(MODALITIES))
    del state_dict["modality_heads.audio.bias"]
    state_dict["modality_heads.audio.extra"] = torch.zeros(1)
    state_dict["modality_heads.text.weight"] = torch.zeros(5, 8)
    with torch.device("meta"):
        model = TinyImageBind()
    with pytest.raises(CheckpointError) as caught:
        load_into(model, state_dict)
    message = str(caught.value)
    assert "1 missing keys (modality_heads.audio.bias)" in message
    assert "1 unexpected keys (modality_heads.audio.extra)" in message
    assert "modality_heads.text.weight: checkpoint (5, 8), model (3, 8)" in message


def test_long_key_lists_are_shortened() -> None:
    with torch.device("meta"):
        model = TinyImageBind()
    with pytest.raises(CheckpointError, match=r"missing keys \(.*, and \d+ more\)"):
        load_into(model, {})


def test_meta_tensor_left_behind_is_reported() -> None:
    class WithScratch(TinyImageBind):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scratch", torch.zeros(3), persistent=False)

    state_dict = select_keys(full_checkpoint(), modality_prefixes(MODALITIES))
    with torch.device("meta"):
        model = WithScratch()
    with pytest.raises(ModelError, match=r"still on the meta device.*scratch"):
        load_into(model, state_dict)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_bf16_encoder_reads_the_token_table_from_the_file(tmp_path: Path) -> None:
    """bf16 on the CPU: the text token table is not copied, and the rows a batch looked up are
    handed back after it (the page cache keeps them).

    Every other weight is a bf16 copy, and the embeddings are exactly those of a model cast
    whole (a row cast after the lookup is the row of a cast table).
    """
    path = tmp_path / "tiny.pth"
    torch.save(build_imagebind("tiny").state_dict(), path)
    settings = ModelSettings(name="tiny", checkpoint_path=path, cache_dir=tmp_path, device="cpu", dtype="bfloat16")
    encoder = Encoder.load(settings, MediaLimits(), progress=False)

    table = encoder.model.get_parameter(LOOKUP_TABLES[0])
    assert table.dtype == torch.float32 and table.data_ptr() in file_mapping(path)
    others = [p.dtype for name, p in encoder.model.named_parameters() if name not in LOOKUP_TABLES]
    assert set(others) == {torch.bfloat16}
    texts = ["a red car at night", "two cats on a sofa", "the quick brown fox jumps over the lazy dog"]
    with torch.inference_mode():
        torch.nn.functional.embedding(encoder.tokenizer(texts), table)
    looked_up = mapped_rss_kb(path)  # what a lookup leaves resident when nothing hands it back
    drop_pages(table)
    before = mapped_rss_kb(path)

    got = encoder.embed("text", texts)

    assert mapped_rss_kb(path) <= before < looked_up
    whole = build_imagebind("tiny").to(torch.bfloat16)
    with torch.inference_mode():
        expected = whole.embed_text(encoder.tokenizer(texts)).float().numpy()
    assert (got == expected).all()


def test_a_token_table_in_memory_is_cast_and_never_handed_back() -> None:
    """Random weights live in anonymous memory, where dropping pages would zero them."""
    model = build_imagebind("tiny")
    assert not is_file_backed(model.get_parameter(LOOKUP_TABLES[0]))
    encoder = Encoder(model, "tiny", torch.device("cpu"), torch.bfloat16, MediaLimits())
    table = encoder.model.get_parameter(LOOKUP_TABLES[0])
    assert table.dtype == torch.bfloat16
    first = encoder.embed("text", ["a red car at night"])
    assert (encoder.embed("text", ["a red car at night"]) == first).all()
    assert table.abs().sum() > 0


def file_mapping(path: Path) -> range:
    """The addresses of this process's memory mappings of `path` (one span from /proc/self/maps)."""
    spans = [
        [int(part, 16) for part in line.split()[0].split("-")]
        for line in Path("/proc/self/maps").read_text().splitlines()
        if line.split()[-1] == str(path)
    ]
    assert spans, f"{path} is not mapped"
    return range(min(s[0] for s in spans), max(s[1] for s in spans))
