"""Replicas on one dataset on S3 (moto on loopback): front ends that only read, one ingest that
writes (docs/deployment.md).

- Two `search-all serve --web` processes open one `s3://` dataset while an ingest process
  appends to it in committed batches: both answer every request throughout, both find the new
  images within the refresh interval, each only ever sees whole batches, and neither writes to
  S3 (each reaches it through its own recording tap, tests/fakes/s3_tap.py: GET and HEAD only).
  One of them loses S3 during the ingest: it keeps answering from memory, its /metrics says
  how long since it last reached the dataset, and it catches up when S3 is back.
- At the store level: a refresh that waits on a slow S3 does not hold up the reads of the
  handle that serves (an image already read, a stored embedding), nor closing it; storage that
  fails is a StoreError naming the row; the approximate index is kept by the writer and only
  downloaded by the replicas.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from core.config import Secrets, Settings
from core.errors import StoreError
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from ingest.runner import run_ingest
from tests.fakes.s3_server import ACCESS_KEY, REGION, SECRET_KEY, free_port
from tests.fakes.s3_tap import S3Tap
from tests.media_factory import make_picture, picture_folder

pytestmark = pytest.mark.usefixtures("s3_env")

ROOT = Path(__file__).resolve().parent.parent
READS = {"GET", "HEAD"}
WAIT_S = 60.0  # the bound on every wait below; the whole test takes well under it
REFRESH_S = 0.5
FIRST, SECOND, BATCH = 6, 8, 2  # images in the first ingest, in the second, per commit


def creds(endpoint_url: str) -> dict[str, str]:
    return {
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "endpoint_url": endpoint_url,
        "aws_region": REGION,
    }


def records(first: int, count: int) -> list[Record]:
    rng = np.random.default_rng(first)
    return [
        Record(id=f"r{i}", embedding=rng.standard_normal(8).astype(np.float32), text=f"picture {i}",
               image_jpeg=make_picture(i), width=80 + 4 * i, height=64)
        for i in range(first, first + count)
    ]


async def until(check: Any, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `check()` (sync) until true, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_refresh_waiting_on_s3_does_not_hold_up_reads(s3_server):
    bucket = s3_server.new_bucket("replica-store")
    path = f"s3://{bucket}/collection"
    async with S3Tap(s3_server.endpoint_url) as writer_tap, S3Tap(s3_server.endpoint_url) as tap:
        writer = await asyncio.to_thread(
            DeepLakeStore.create, path, model_name="tiny", dim=8, creds=creds(writer_tap.endpoint_url)
        )
        await asyncio.to_thread(writer.append, records(0, 5))
        reader = await asyncio.to_thread(DeepLakeStore.open, path, creds=creds(tap.endpoint_url))
        image = await asyncio.to_thread(reader.image_bytes, 0)
        assert image == make_picture(0)
        await asyncio.to_thread(writer.append, records(5, 3))
        tap.stall("/_deeplake_log/")  # the commit log answers slowly; the data does not
        refreshing = asyncio.create_task(asyncio.to_thread(reader.refresh))
        try:
            await until(lambda: tap.stalled > 0, "the refresh to ask S3 for the commit log")
            # The handle that serves keeps serving meanwhile.
            assert await asyncio.wait_for(asyncio.to_thread(reader.image_bytes, 0), 10) == image
            stored = await asyncio.wait_for(asyncio.to_thread(reader.embedding, "r1"), 10)
            assert np.allclose(stored, records(0, 5)[1].embedding)
            assert reader.info.rows == 5 and not refreshing.done()
        finally:
            tap.release()
        assert await asyncio.wait_for(refreshing, WAIT_S) is True
        assert reader.info.rows == 8
        hits = reader.search(records(5, 3)[2].embedding, 1)
        assert hits[0].id == "r7" and await asyncio.to_thread(reader.image_bytes, hits[0].row) == make_picture(7)
        assert await asyncio.to_thread(reader.refresh) is False  # nothing new
        # Closing (a replica stopping) does not wait for a refresh stuck on S3 either.
        await asyncio.to_thread(writer.append, records(8, 2))
        tap.stall("/_deeplake_log/")
        refreshing = asyncio.create_task(asyncio.to_thread(reader.refresh))
        try:
            await until(lambda: tap.stalled > 0, "the second refresh to ask S3")
            await asyncio.wait_for(asyncio.to_thread(reader.close), 10)
        finally:
            tap.release()
        with pytest.raises(StoreError, match="closed"):
            await asyncio.wait_for(refreshing, WAIT_S)
        writer.close()
    assert tap.methods() <= READS
    assert "PUT" in writer_tap.methods()  # a tap sees writes: the reader made none


# ----- two `search-all serve --web` processes, one ingest process ---------------------------


@dataclass
class Replica:
    """One front-end process, reaching S3 through its own tap, and what the test saw of it."""

    name: str
    tap: S3Tap
    web_port: int
    health_port: int
    log: Path
    process: asyncio.subprocess.Process | None = None
    statuses: list[int] = field(default_factory=list)  # of every request the test made
    rows: list[int] = field(default_factory=list)  # /healthz "rows", in the order seen
    found: set[str] = field(default_factory=set)  # ids its searches returned
    rows_while_down: set[int] = field(default_factory=set)
    all_rows_at: float | None = None  # when it first reported every row

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def toml_config(path: Path, dataset: str, endpoint_url: str, cache_dir: Path, **sections: dict[str, Any]) -> Path:
    lines = [
        "[model]", 'name = "tiny"', f'cache_dir = "{cache_dir}"',
        "[store]", f'dataset = "{dataset}"', f's3_endpoint_url = "{endpoint_url}"', f's3_region = "{REGION}"',
    ]
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"'
                  for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def child_env() -> dict[str, str]:
    """This environment (with s3_env's fake keys) without tokens or settings of the caller's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SEARCH_ALL_", "DISCORD_", "SLACK_"))}
    return {**env, "SEARCH_ALL_OPS__REFRESH_SECONDS": str(REFRESH_S), "PYTHONUNBUFFERED": "1"}


async def spawn(args: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", *args, cwd=ROOT, env=child_env(),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )


@asynccontextmanager
async def running(replica: Replica, config: Path) -> AsyncIterator[Replica]:
    """The replica's `serve --web` process while inside; SIGTERM at the end (it exits 0)."""
    replica.process = await spawn(["serve", "--web", "--config", str(config)], replica.log)
    try:
        yield replica
    finally:
        if replica.process.returncode is None:
            replica.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(replica.process.wait(), WAIT_S)
            except TimeoutError:
                replica.process.kill()
                await replica.process.wait()


async def rows_of(http: aiohttp.ClientSession, replica: Replica) -> int | None:
    """/healthz "rows", or None while the process is not listening yet."""
    assert replica.process is not None
    if replica.process.returncode is not None:
        raise AssertionError(f"replica {replica.name} exited ({replica.process.returncode}):\n{replica.output()}")
    try:
        async with http.get(f"http://127.0.0.1:{replica.health_port}/healthz") as response:
            replica.statuses.append(response.status)
            return (await response.json())["rows"]
    except aiohttp.ClientConnectionError:
        return None


async def poll(http: aiohttp.ClientSession, replica: Replica, down: bool) -> None:
    """One round of what a user does: search, and the health probe a load balancer makes."""
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("text", "a picture")
    form.add_field("limit", str(FIRST + SECOND))
    async with http.post(f"{replica.web}/api/search", data=form) as response:
        replica.statuses.append(response.status)
        if response.status == 200:
            replica.found |= {image["id"] for image in (await response.json())["images"]}
    rows = await rows_of(http, replica)
    assert rows is not None
    if not replica.rows or replica.rows[-1] != rows:
        replica.rows.append(rows)
    if down:
        replica.rows_while_down.add(rows)
    if rows == FIRST + SECOND and replica.all_rows_at is None:
        replica.all_rows_at = time.monotonic()


async def metric(http: aiohttp.ClientSession, replica: Replica, name: str) -> float:
    """A value of the replica's /metrics (Prometheus text)."""
    async with http.get(f"http://127.0.0.1:{replica.health_port}/metrics") as response:
        replica.statuses.append(response.status)
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics of replica {replica.name}")


async def fetch_image(http: aiohttp.ClientSession, replica: Replica, row: int) -> None:
    async with http.get(f"{replica.web}/image/{row}") as response:
        replica.statuses.append(response.status)
        assert response.content_type == "image/jpeg" and (await response.read())[:3] == b"\xff\xd8\xff"


async def test_two_replicas_answer_throughout_an_ingest_and_never_write(s3_server, tmp_path):
    bucket = s3_server.new_bucket("replicas")
    dataset = f"s3://{bucket}/collection"
    cache = tmp_path / "cache"
    writer_config = toml_config(tmp_path / "ingest.toml", dataset, s3_server.endpoint_url, cache)
    first = picture_folder(tmp_path / "first", FIRST)
    settings = Settings.model_validate({
        "model": {"name": "tiny", "cache_dir": str(cache)},
        "store": {"dataset": dataset, "s3_endpoint_url": s3_server.endpoint_url, "s3_region": REGION},
    })
    report = await asyncio.to_thread(run_ingest, settings, f"folder:{first}", secrets=Secrets(), workers=0,
                                     progress=False)
    assert report.summary.added == FIRST
    second = tmp_path / "second"
    second.mkdir()
    for i in range(SECOND):
        (second / f"q{i:02d}.jpg").write_bytes(make_picture(FIRST + i))
    everything = {f"p{i:02d}.jpg" for i in range(FIRST)} | {f"q{i:02d}.jpg" for i in range(SECOND)}

    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)))
        replicas = []
        for name in ("a", "b"):
            tap = await stack.enter_async_context(S3Tap(s3_server.endpoint_url))
            replica = Replica(name, tap, free_port(), free_port(), tmp_path / f"replica-{name}.log")
            config = toml_config(
                tmp_path / f"replica-{name}.toml", dataset, tap.endpoint_url, tmp_path / f"cache-{name}",
                search={"collapse_cosine": 1.0, "default_limit": FIRST + SECOND, "max_limit": FIRST + SECOND},
                web={"host": "127.0.0.1", "port": replica.web_port},
                ops={"health_port": replica.health_port},
            )
            replicas.append(await stack.enter_async_context(running(replica, config)))
        a, b = replicas
        deadline = time.monotonic() + WAIT_S
        for replica in replicas:
            while await rows_of(http, replica) != FIRST:
                assert time.monotonic() < deadline, f"replica {replica.name} did not start:\n{replica.output()}"
                await asyncio.sleep(0.1)

        for replica in replicas:  # an image its page shows (DeepLake keeps it in memory now)
            await fetch_image(http, replica, 0)

        # The ingest appends the second folder, two images per commit; meanwhile b loses S3.
        b.tap.down()
        await until(lambda: any(r.answered == 503 for r in b.tap.requests), "b to try S3")
        # b's refresh now waits on S3 (DeepLake retries for about 40 s); the image b has read
        # comes from memory meanwhile, at once.
        await asyncio.wait_for(fetch_image(http, b, 0), 5.0)
        ingest = await spawn(["ingest", f"folder:{second}", "--config", str(writer_config), "--batch-size",
                              str(BATCH), "--workers", "0"], tmp_path / "ingest.log")
        ingest_done: float | None = None
        deadline = time.monotonic() + WAIT_S
        while a.all_rows_at is None or ingest_done is None:
            assert time.monotonic() < deadline, (
                f"timed out; replica a saw rows {a.rows}; the ingest:\n{(tmp_path / 'ingest.log').read_text()}"
            )
            for replica in replicas:
                await poll(http, replica, down=replica.tap.is_down)
            if ingest_done is None and ingest.returncode is not None:
                ingest_done = time.monotonic()
            await asyncio.sleep(0.1)
        assert ingest.returncode == 0, (tmp_path / "ingest.log").read_text()
        # b's /metrics tells that it has not reached the dataset for a while.
        assert await metric(http, b, "search_all_dataset_refresh_age_seconds") > 3 * REFRESH_S
        assert await metric(http, b, "search_all_dataset_rows") == FIRST
        # S3 is back for b: it catches up.
        b.tap.up()
        deadline = time.monotonic() + WAIT_S
        while b.all_rows_at is None or b.found != everything:
            assert time.monotonic() < deadline, f"timed out; replica b saw rows {b.rows}:\n{b.output()}"
            for replica in replicas:
                await poll(http, replica, down=False)
            await asyncio.sleep(0.1)
        while await metric(http, b, "search_all_dataset_refresh_age_seconds") > 3 * REFRESH_S:
            assert time.monotonic() < deadline, "b's refresh age did not fall back"
            await asyncio.sleep(0.1)
        for replica in replicas:  # an image kept in the dataset, of a row the ingest added
            await fetch_image(http, replica, FIRST + SECOND - 1)
        ends = [replica.process for replica in replicas]
    # Every request answered, by both; each saw every image, and only whole commits.
    for replica in replicas:
        assert set(replica.statuses) == {200}, (replica.name, replica.statuses)
        assert replica.found == everything, replica.name
        assert replica.rows == sorted(replica.rows), replica.rows
        assert set(replica.rows) <= set(range(FIRST, FIRST + SECOND + 1, BATCH)), replica.rows
    # a, with S3: the new rows within the refresh interval of the last commit (plus the time a
    # refresh takes on this machine); b, without S3: what it had, from memory.
    assert a.all_rows_at - ingest_done < REFRESH_S + 10.0
    assert b.rows_while_down == {FIRST}
    assert any(r.answered == 503 for r in b.tap.requests)  # it did try S3 while it was down
    # Neither wrote: reads only, and a clean stop on SIGTERM.
    for replica in replicas:
        assert replica.tap.requests and replica.tap.methods() <= READS, (replica.name, replica.tap.methods())
    assert [process.returncode for process in ends] == [0, 0]


def test_storage_gone_searches_answer_from_memory_and_reads_say_what_failed(tmp_path):
    """What a replica does when its dataset's storage fails (S3 down, here the files gone):
    searches answer from the rows in memory; reading an image or a stored embedding raises a
    StoreError naming the row (the web page answers it 503), not DeepLake's own exception."""
    path = str(tmp_path / "collection")
    writer = DeepLakeStore.create(path, model_name="tiny", dim=8)
    writer.append(records(0, 5))
    writer.close()
    reader = DeepLakeStore.open(path)
    for data in Path(path).rglob("*"):
        if data.is_file() and "_deeplake_log" not in data.parts:
            data.unlink()
    hits = reader.search(records(0, 5)[3].embedding, 1)
    assert hits[0].id == "r3"
    with pytest.raises(StoreError, match="cannot read the image at row 3 of dataset"):
        reader.image_bytes(hits[0])
    with pytest.raises(StoreError, match="cannot read the embedding of 'r3'"):
        reader.embedding("r3")
    reader.close()


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Vectors in neighbourhoods (as real embeddings are): an index reaches its recall on them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 100), dim)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)


async def test_the_writer_keeps_the_index_and_replicas_only_load_it(s3_server, tmp_path, monkeypatch):
    """The approximate index (core/store/ann) of an S3 dataset: built and extended by the
    writer, which uploads it beside the dataset; two replicas, each with its own cache as on
    its own machine, download and search it, see the rows appended since, and write nothing."""
    from core.store.ann import files as ann_files

    bucket = s3_server.new_bucket("replica-index")
    path = f"s3://{bucket}/collection"
    vectors = clustered(2030, 64, seed=21)
    rows = [Record(id=f"r{i}", embedding=v, text=f"picture {i}") for i, v in enumerate(vectors)]
    async with S3Tap(s3_server.endpoint_url) as writer_tap, S3Tap(s3_server.endpoint_url) as tap_a, \
            S3Tap(s3_server.endpoint_url) as tap_b:
        monkeypatch.setattr(ann_files, "_cache_root", lambda: tmp_path / "writer-cache")
        writer = await asyncio.to_thread(
            DeepLakeStore.create, path, model_name="tiny", dim=64, creds=creds(writer_tap.endpoint_url), mode="index"
        )
        await asyncio.to_thread(writer.append, rows[:2000])
        await asyncio.to_thread(writer.build_index)
        replicas = []
        for name, tap in (("a", tap_a), ("b", tap_b)):
            monkeypatch.setattr(ann_files, "_cache_root", lambda name=name: tmp_path / f"cache-{name}")
            replica = await asyncio.to_thread(DeepLakeStore.open, path, creds=creds(tap.endpoint_url), mode="index")
            assert (await asyncio.to_thread(replica.search, vectors[17], 1))[0].id == "r17"
            assert replica._index.current_view() is not None  # answered by the index
            replicas.append(replica)
        # An ingest commit, then what the ingest does when it ends: the index extended, saved.
        await asyncio.to_thread(writer.append, rows[2000:])
        what, _ = await asyncio.to_thread(writer.update_index)
        assert what.startswith("up to date")
        for replica in replicas:
            assert await asyncio.to_thread(replica.refresh) is True
            assert (await asyncio.to_thread(replica.search, vectors[2020], 1))[0].id == "r2020"
            assert replica._index.current_view() is not None
            replica.close()
        writer.close()
    for name, tap in (("a", tap_a), ("b", tap_b)):
        assert tap.methods() <= READS, (name, tap.methods())
        assert any("/collection.index/" in r.path for r in tap.requests), name  # loaded from S3
        assert any((tmp_path / f"cache-{name}").rglob("*.faiss")), name
    assert any(r.method == "PUT" and "/collection.index/" in r.path for r in writer_tap.requests)


async def test_refresh_forever_counts_failures_and_dates_the_last_success():
    """What /metrics shows of a replica's refreshes (search_all_dataset_refresh_*)."""
    from core.startup import Freshness, refresh_forever

    outcomes = [StoreError("cannot refresh dataset s3://b/c: S3 is down"), True, False]
    now = [100.0]

    class Service:
        class store:
            class info:
                rows = 8

        @staticmethod
        async def refresh() -> bool:
            now[0] += 1.0
            outcome = outcomes.pop(0) if outcomes else False
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

    freshness = Freshness(clock=lambda: now[0], last_ok=100.0)
    task = asyncio.create_task(refresh_forever(Service(), 0, freshness))  # type: ignore[arg-type]
    try:
        await until(lambda: freshness.failures == 1 and freshness.last_ok >= 103.0, "three refreshes")
    finally:
        task.cancel()
    assert freshness.failures == 1  # the failed one, logged; the rows already loaded kept
    assert freshness.age_s() == now[0] - freshness.last_ok
