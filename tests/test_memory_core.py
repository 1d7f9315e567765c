"""Channel memory's core: the store (row deletion, isolation, the channel filter before the
top-k), the registry, the worker's background queue, and SearchService scopes."""

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from core.config import MediaLimits, MemorySettings, ModelSettings, SearchSettings
from core.encoder import Encoder
from core.memory.channels import ChannelRegistry
from core.memory.memory import ChannelMemory, MemoryUnavailableError
from core.memory.model import PostedImage, SearchScope, Tenant
from core.memory.store import MemoryRecord, MemoryStore
from core.page_memory import PageMemory, SavedQuery
from core.query import Query, Term
from core.service import SearchService
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from core.worker import EncoderWorker
from tests.media_factory import make_jpeg

DIM = 8
A, B = Tenant("discord", "100"), Tenant("discord", "200")


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def record(i: int, *, channel: str = "c1", author: str = "u1", message: str | None = None,
           embedding: np.ndarray | None = None, text: str = "") -> MemoryRecord:
    return MemoryRecord(
        id=f"{message or f'm{i}'}/a{i}", embedding=unit(i) if embedding is None else embedding, text=text,
        channel=channel, message=message or f"m{i}", item=f"a{i}", author=author, posted_at=1_700_000_000.0 + i,
        link=f"https://discord.com/channels/x/{channel}/m{i}", thumbnail=make_jpeg(16, 16, seed=i),
        width=640, height=480,
    )


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "memory", model_name="tiny", dim=DIM)
    yield s
    s.close()


def test_rows_are_deleted_by_message_author_and_channel_and_stay_deleted(tmp_path, store):
    store.add(A, [record(i, channel="c1" if i < 6 else "c2", author="u1" if i % 2 else "u2") for i in range(10)])
    assert store.count(A) == 10 and store.count(A, "c2") == 4
    assert store.delete(A, message="m3") == 1
    assert store.delete(A, author="u2", channel="c1") == 3  # m0, m2, m4
    assert store.delete(A, channel="c2") == 4
    left = {h.id for h in store.search(A, unit(1), 10, channels=None)[0]}
    assert left == {"m1/a1", "m5/a5"}
    reopened = MemoryStore(tmp_path / "memory", model_name="tiny", dim=DIM)  # the deletions were committed
    assert {h.id for h in reopened.search(A, unit(1), 10, channels=None)[0]} == left
    assert store.image(A, "m1/a1").startswith(b"\xff\xd8\xff") and store.image(A, "m3/a3") is None


def test_an_edit_that_drops_one_attachment_forgets_only_that_one(store):
    store.add(A, [record(1, message="m9"), record(2, message="m9")])
    assert store.delete(A, message="m9", keep_items={"a2"}) == 1
    assert [h.id for h in store.search(A, unit(2), 5, channels=None)[0]] == ["m9/a2"]


def test_tenants_never_see_each_other_and_drop_erases_one_folder(store):
    store.add(A, [record(i) for i in range(5)])
    store.add(B, [record(i + 100) for i in range(3)])
    hits, _ = store.search(B, unit(0), 10, channels=None)
    assert {h.id for h in hits} == {f"m{i}/a{i}" for i in range(100, 103)}
    assert all(h.meta.tenant == B for h in hits)
    assert store.drop(A) == 5
    assert not store.path_of(A).exists() and store.count(A) == 0 and store.count(B) == 3


def test_the_channel_filter_applies_before_the_top_k(store):
    q = unit(0)
    # 300 images nearly equal to the query in a channel the asker cannot read, 7 others in one they can
    crowd = [record(i, channel="secret", embedding=q + 0.01 * unit(i)) for i in range(1, 301)]
    store.add(A, crowd + [record(1000 + i, channel="open") for i in range(7)])
    hits, vectors = store.search(A, q, 5, channels={"open"})
    assert len(hits) == 5 and {h.meta.channel for h in hits} == {"open"}
    page2, _ = store.search(A, q, 5, channels={"open"}, offset=5)
    assert len(page2) == 2 and not {h.id for h in page2} & {h.id for h in hits}
    assert vectors.shape == (5, DIM)
    assert store.search(A, q, 5, channels=set())[0] == []


def test_filter_words_match_the_message_text(store):
    store.add(A, [record(1, text="the whiteboard after standup"), record(2, text="cat pictures")])
    hits, _ = store.search(A, unit(2), 5, channels=None, include=["whiteboard"])
    assert [h.id for h in hits] == ["m1/a1"]


def test_the_registry_keeps_what_is_on_and_the_backfill_across_restarts(tmp_path):
    path = tmp_path / "channels.sqlite"
    reg = ChannelRegistry(path, clock=lambda: 1000.0)
    reg.turn_on(A, "c1", "u1")
    reg.start_backfill(A, "c1", 30)
    reg.turn_on(B, "c9", "u2")
    reg.turn_off(B, "c9")
    reg.close()
    again = ChannelRegistry(path)
    assert again.is_on(A, "c1") and not again.is_on(B, "c9") and not again.is_on(B, "c1")
    assert again.known_channels(B) == {"c9"} and again.since(A, "c1") == (1000.0, "u1")
    [(tenant, channel, progress)] = again.unfinished_backfills()
    assert (tenant, channel, progress.wanted, progress.finished) == (A, "c1", 30, False)
    again.forget_tenant(A)
    assert again.channels_on(A) == set() and again.unfinished_backfills() == []


class GatedEncoder:
    """Records the order of forward passes; the first one waits for `gate`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.passes: list[list[str]] = []

    def prepare(self, modality, payload):
        return payload

    def forward(self, modality, batch):
        self.started.set()
        self.gate.wait(10)
        self.passes.append(list(batch))
        return np.ones((len(batch), DIM), np.float32)


async def test_queries_go_before_queued_indexing():
    encoder = GatedEncoder()
    async with EncoderWorker(encoder, batch_window_ms=0, background_batch_size=2) as worker:  # type: ignore[arg-type]
        first = asyncio.ensure_future(worker.embed("text", "q1"))
        await asyncio.to_thread(encoder.started.wait, 10)
        background = [asyncio.ensure_future(worker.embed("image", f"b{i}", background=True)) for i in range(6)]
        await asyncio.sleep(0)
        query = asyncio.ensure_future(worker.embed("text", "q2"))
        await asyncio.sleep(0.05)  # both queued while the model is busy
        encoder.gate.set()
        await asyncio.gather(first, query, *background)
    assert encoder.passes[0] == ["q1"] and encoder.passes[1] == ["q2"]
    assert encoder.passes[2:] == [["b0", "b1"], ["b2", "b3"], ["b4", "b5"]]
    assert worker.background_batches == 3


async def test_background_work_alone_runs_and_shutdown_fails_what_is_left():
    encoder = GatedEncoder()
    encoder.gate.set()
    async with EncoderWorker(encoder, background_batch_size=4) as worker:  # type: ignore[arg-type]
        vectors = await asyncio.gather(*(worker.embed("image", i, background=True) for i in range(5)))
    assert len(vectors) == 5 and worker.background_batches == 2


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    return Encoder.load(ModelSettings(name="tiny"), MediaLimits())


def with_exif_jpeg(seed: int) -> bytes:
    image = Image.new("RGB", (900, 600), (seed * 40 % 255, 90, 30))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def posted(tenant: Tenant, channel: str, i: int, data: bytes | None = None, author: str = "u1") -> PostedImage:
    return PostedImage(tenant=tenant, channel=channel, message=f"m{i}", item=f"a{i}", author=author,
                       posted_at=1_700_000_000.0 + i, link=f"https://x/{channel}/m{i}",
                       data=data or make_jpeg(64, 48, seed=i), text=f"message {i}")


async def test_indexing_keeps_a_bounded_thumbnail_without_metadata_only_where_memory_is_on(tmp_path, tiny):
    settings = MemorySettings(enabled=True, dir=tmp_path, thumbnail_side=128)
    store = MemoryStore(tmp_path, model_name="tiny", dim=tiny.dim)
    async with EncoderWorker(tiny) as worker:
        memory = ChannelMemory(store, ChannelRegistry(None), worker, settings, MediaLimits())
        await memory.enable(A, "c1", by="u1")
        report = await memory.index([posted(A, "c1", 1, with_exif_jpeg(1)), posted(A, "c2", 2),
                                     posted(A, "c1", 3, b"not an image")])
        assert (report.indexed, report.skipped, report.failed) == (1, 1, 1)
        again = await memory.index([posted(A, "c1", 1, with_exif_jpeg(1))])
        assert again.indexed == 0 and again.skipped == 1
        status = await memory.status(A, "c1")
        assert status.on and status.images == 1 and status.by == "u1"
    thumb = Image.open(io.BytesIO(store.image(A, "m1/a1")))
    assert max(thumb.size) == 128 and "exif" not in thumb.info
    off = ChannelMemory(store, ChannelRegistry(None), worker, MemorySettings(), MediaLimits())
    with pytest.raises(MemoryUnavailableError, match="enabled = true"):
        await off.enable(A, "c1", by="u1")


def test_page_memory_keeps_the_scope(tmp_path):
    pages = PageMemory(tmp_path / "pages.sqlite")
    scope = SearchScope("both", A, frozenset({"c1", "c2"}))
    saved = SavedQuery(unit(1), (), (), 5, "d", "", -1.0, scope=scope)
    plain = SavedQuery(unit(1), (), (), 5, "d", "", -1.0)
    assert saved.key() != plain.key()
    assert pages.load(pages.save(saved)).scope == scope and pages.load(pages.save(plain)).scope == plain.scope


async def test_service_scopes_give_full_pages_and_respect_channels(tmp_path, tiny):
    collection = DeepLakeStore.create(str(tmp_path / "collection"), model_name="tiny", dim=tiny.dim)
    pictures = [make_jpeg(64, 48, seed=200 + i) for i in range(6)]
    vectors = tiny.embed("image", pictures)
    collection.append([Record(id=f"shared{i}", embedding=v) for i, v in enumerate(vectors)])
    store = MemoryStore(tmp_path / "memory", model_name="tiny", dim=tiny.dim)
    async with EncoderWorker(tiny) as worker:
        memory = ChannelMemory(store, ChannelRegistry(None), worker, MemorySettings(enabled=True), MediaLimits())
        for channel in ("open", "secret"):
            await memory.enable(A, channel, by="u1")
        await memory.index([posted(A, "secret", i) for i in range(30)] + [posted(A, "open", 100 + i) for i in range(12)])
        service = SearchService(worker, collection, SearchSettings(max_limit=10, collapse_cosine=0.999),
                                memory=memory)
        query = Query((Term("image", make_jpeg(64, 48, seed=3)),), limit=5)
        mine = SearchScope("memory", A, frozenset({"open"}))
        first = await service.search(query, mine)
        assert len(first.items) == 5 and {i.memory.channel for i in first.items} == {"open"}
        second = await service.page(first.page_key, 5)
        third = await service.page(first.page_key, 10)
        items = [i for r in (first, second, third) for i in r.items]
        assert len(items) == len({i.id for i in items}) and all(i.row == -1 for i in items)
        assert len(items) + sum(i.similar for i in items) == 12  # every image of "open", none else
        # a button pressed by someone who may read nothing there: nothing
        assert (await service.page(first.page_key, 0, channels=frozenset())).items == []
        both = await service.search(Query(query.terms, limit=10), SearchScope("both", A, frozenset({"open"})))
        kinds = {i.memory is None for i in both.items}
        assert kinds == {True, False} and len(both.items) == 10
        assert [i.score for i in both.items] == sorted((i.score for i in both.items), reverse=True)
        assert (await service.image_bytes(first.items[0])).startswith(b"\xff\xd8\xff")
        collection_only = await service.search(query)
        assert all(i.memory is None for i in collection_only.items)
        other = await service.search(query, SearchScope("memory", B, None))
        assert other.items == []
        # The collection has no prompt text, but memory's messages may: a filter there that
        # matches nothing is an empty page, not "this collection has no prompt text".
        filtered = await service.search(Query(query.terms, limit=5, include=("zebra",)), mine)
        assert filtered.items == [] and filtered.best_score is None
        like = await service.more_like_memory(mine, first.items[0].id)
        assert like.items[0].id == first.items[0].id
        with pytest.raises(Exception, match="no longer remembered"):
            await service.more_like_memory(mine, "m0/a0")  # in "secret"


async def test_indexing_outside_the_worker_keeps_to_the_share_only_while_queries_come():
    encoder = GatedEncoder()
    encoder.gate.set()
    async with EncoderWorker(encoder, background_share=0.25, background_quiet_s=60) as worker:  # type: ignore[arg-type]
        assert worker.background_pause(1.0) == 0.0  # no query yet: full speed
        await worker.embed("text", "a query")
        assert worker.background_pause(1.0) == pytest.approx(3.0)
