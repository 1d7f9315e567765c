"""The vector store: one contract battery for every `VectorStore`, then DeepLake specifics.

A new store implementation earns its place by adding a `Backend` to `BACKENDS`: every test
taking the `backend` fixture then runs against it. Datasets are real (DeepLake on disk under
`tmp_path` and in `mem://`); the reference answers come from plain numpy.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import deeplake
import numpy as np
import pytest
from PIL import Image

from core.errors import ModelMismatchError, StoreError
from core.store.base import Hit, Record, VectorStore
from core.store.deeplake_store import DeepLakeStore
from core.store.exact import top_indices

DIM = 16


# ----- backends ------------------------------------------------------------------------------


class Backend(Protocol):
    """Makes stores on one fresh collection: the writer, and more handles on the same data."""

    def create(self, *, model_name: str = "tiny", dim: int = DIM) -> VectorStore: ...

    def reopen(
        self, *, read_only: bool = True, expect_model: str | None = None
    ) -> VectorStore: ...


@dataclass
class DeepLakeBackend:
    path: str
    options: dict[str, Any]

    def create(self, *, model_name: str = "tiny", dim: int = DIM) -> VectorStore:
        return DeepLakeStore.create(self.path, model_name=model_name, dim=dim, **self.options)

    def reopen(self, *, read_only: bool = True, expect_model: str | None = None) -> VectorStore:
        return DeepLakeStore.open(
            self.path, read_only=read_only, expect_model=expect_model, **self.options
        )


BACKENDS = ["deeplake-disk-exact", "deeplake-mem-exact", "deeplake-mem-index"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name = request.param
    path = str(tmp_path / "ds") if "disk" in name else f"mem://{uuid.uuid4().hex}"
    mode = "index" if name.endswith("index") else "exact"
    return DeepLakeBackend(path, {"mode": mode})


# ----- data and the numpy reference ---------------------------------------------------------------


def jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=70)
    return buf.getvalue()


def make_records(
    n: int, *, seed: int = 0, texts: Sequence[str] | None = None, prefix: str = "r"
) -> list[Record]:
    emb = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return [
        Record(
            id=f"{prefix}{i}",
            embedding=emb[i],
            text=texts[i] if texts is not None else f"picture {i}",
            source="test",
            s3_key=f"img/{prefix}{i}.jpg" if i % 2 else "",
            width=10 + i,
            height=20 + i,
        )
        for i in range(n)
    ]


def reference(
    records: Sequence[Record],
    q: np.ndarray,
    k: int,
    *,
    offset: int = 0,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[tuple[str, float]]:
    """Exact cosine top-k, computed the plain way: filter, score every row, sort."""
    emb = np.stack([r.embedding for r in records]).astype(np.float64)
    scores = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    inc = [w.strip().lower() for w in include]
    exc = [w.strip().lower() for w in exclude if w.strip()]
    ok = [
        all(w in r.text.lower() for w in inc) and not any(w in r.text.lower() for w in exc)
        for r in records
    ]
    order = [i for i in np.argsort(-scores, kind="stable") if ok[i]]
    return [(records[i].id, float(scores[i])) for i in order[offset : offset + k]]


def assert_same(hits: list[Hit], expected: list[tuple[str, float]]) -> None:
    assert [h.id for h in hits] == [e[0] for e in expected]
    np.testing.assert_allclose([h.score for h in hits], [e[1] for e in expected], atol=1e-5)


def query(seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).standard_normal(DIM).astype(np.float32)


# ----- the contract ------------------------------------------------------------------------


def test_create_append_reopen(backend: Backend) -> None:
    writer = backend.create(model_name="tiny")
    assert writer.info.rows == 0 and writer.info.dim == DIM and writer.info.model_name == "tiny"
    assert writer.search(query(0), 5) == []
    records = make_records(50)
    assert writer.append(records[:30]) == 30
    assert writer.append(records[30:]) == 20
    assert writer.append([]) == 0
    writer.close()

    reader = backend.reopen(expect_model="tiny")
    info = reader.info
    assert (info.rows, info.dim, info.model_name, info.read_only) == (50, DIM, "tiny", True)
    hit = reader.search(records[7].embedding, 1)[0]
    assert (hit.id, hit.text, hit.source, hit.s3_key) == ("r7", "picture 7", "test", "img/r7.jpg")
    assert (hit.width, hit.height) == (17, 27)
    assert hit.score == pytest.approx(1.0, abs=1e-6)
    assert reader.search(records[8].embedding, 1)[0].s3_key == ""  # empty text stays ""
    assert reader.existing_ids(["r0", "r49", "r50", "nope"]) == {"r0", "r49"}


@pytest.mark.parametrize("k", [1, 5, 17, 200, 260])
@pytest.mark.parametrize("offset", [0, 3, 198])
def test_search_equals_numpy_exact_top_k(backend: Backend, k: int, offset: int) -> None:
    store = backend.create()
    records = make_records(200, seed=k)
    store.append(records)
    for seed in range(3):
        q = query(seed)
        assert_same(store.search(q, k, offset=offset), reference(records, q, k, offset=offset))


def test_search_of_zero_results(backend: Backend) -> None:
    store = backend.create()
    store.append(make_records(10))
    assert store.search(query(0), 0) == []
    assert store.search(query(0), 5, offset=10) == []
    assert store.search(query(0), 5, include=["absent"]) == []
    with pytest.raises(ValueError):
        store.search(query(0), -1)


def test_has_text_tells_a_collection_with_prompts_from_one_without(backend: Backend) -> None:
    """A folder's images have no text: a filter word can match nothing there (#20 item 11)."""
    store = backend.create()
    assert not store.has_text()
    store.append(make_records(5, texts=[""] * 5))
    store.search(query(0), 3)  # exact mode: the texts are in memory now
    assert not store.has_text()
    store.append(make_records(1, texts=["a prompt at last"], prefix="t"))
    assert store.has_text()
    assert backend.reopen().has_text()


def test_include_finds_the_one_matching_row_of_a_thousand(backend: Backend) -> None:
    texts = [f"a painting of a dog, number {i}" for i in range(1000)]
    texts[613] = "A photo of a CAT on a mat"
    store = backend.create()
    records = make_records(1000, texts=texts)
    store.append(records)
    q = -records[613].embedding  # the worst match: only the filter can bring it back
    hits = store.search(q, 5, include=["cat"])
    assert [h.id for h in hits] == ["r613"]
    assert store.search(q, 5, include=["Cat", "photo"])[0].id == "r613"
    assert store.search(q, 5, include=["cat"], exclude=["mat"]) == []
    assert_same(store.search(q, 5, exclude=["dog"]), reference(records, q, 5, exclude=["dog"]))


@pytest.mark.parametrize(
    ("include", "exclude"),
    [
        (["red"], []),
        ([], ["red"]),
        (["red", "car"], ["night"]),
        (["RED CAR"], []),
        (["it's"], []),
        (["50%"], []),
        ([], ["50%"]),
        (["a_b"], ["über"]),
        (["back\\slash"], []),
        (["über"], []),
        ([], ["ÜBER"]),
        (["  red  ", ""], ["", "blue"]),
    ],
)
def test_filters_equal_the_reference(
    backend: Backend, include: list[str], exclude: list[str]
) -> None:
    words = ["red car", "blue", "night", "it's", "50% off", "a_b", "back\\slash", "Über", "über"]
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 4))) for _ in range(300)]
    store = backend.create()
    records = make_records(300, texts=texts)
    store.append(records)
    for seed in range(3):
        q = query(seed)
        got = store.search(q, 10, include=include, exclude=exclude, offset=2)
        assert_same(got, reference(records, q, 10, offset=2, include=include, exclude=exclude))


def test_model_mismatch_is_refused(backend: Backend) -> None:
    backend.create(model_name="tiny").close()
    with pytest.raises(ModelMismatchError) as err:
        backend.reopen(expect_model="imagebind_huge")
    message = str(err.value)
    assert "'tiny'" in message and "'imagebind_huge'" in message and "--model tiny" in message
    assert backend.reopen(expect_model="tiny").info.model_name == "tiny"


@pytest.mark.parametrize(
    ("embedding", "complaint"),
    [
        (np.zeros(DIM + 1, np.float32) + 1, "shape"),
        (np.ones((1, DIM), np.float32), "shape"),
        (np.full(DIM, np.nan, np.float32), "NaN"),
        (np.array([np.inf] + [0.0] * (DIM - 1), np.float32), "NaN or infinite"),
        (np.zeros(DIM, np.float32), "all-zero"),
    ],
)
def test_bad_embeddings_are_rejected_and_nothing_is_written(
    backend: Backend, embedding: np.ndarray, complaint: str
) -> None:
    store = backend.create()
    good = make_records(3)
    bad = Record(id="bad", embedding=embedding)
    with pytest.raises(StoreError, match=complaint) as err:
        store.append([*good, bad])
    assert "'bad'" in str(err.value)
    assert store.info.rows == 0
    assert store.append(good) == 3


def test_bad_ids_and_images_are_rejected(backend: Backend) -> None:
    store = backend.create()
    store.append(make_records(3))
    emb = np.ones(DIM, np.float32)
    with pytest.raises(StoreError, match="already in"):
        store.append([Record(id="r1", embedding=emb)])
    with pytest.raises(StoreError, match="twice"):
        store.append([Record(id="x", embedding=emb), Record(id="x", embedding=emb)])
    with pytest.raises(StoreError, match="no id"):
        store.append([Record(id="", embedding=emb)])
    with pytest.raises(StoreError, match="not JPEG"):
        store.append([Record(id="png", embedding=emb, image_jpeg=b"\x89PNG\r\n\x1a\n")])
    assert store.info.rows == 3


def test_query_vector_is_checked(backend: Backend) -> None:
    store = backend.create()
    store.append(make_records(5))
    with pytest.raises(StoreError, match="another model"):
        store.search(np.ones(DIM + 3, np.float32), 3)
    with pytest.raises(StoreError, match="NaN"):
        store.search(np.full(DIM, np.nan, np.float32), 3)
    with pytest.raises(StoreError, match="zeros"):
        store.search(np.zeros(DIM, np.float32), 3)


def test_read_only_store_refuses_to_append(backend: Backend) -> None:
    backend.create().close()
    reader = backend.reopen(read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        reader.append(make_records(1))


def test_refresh_sees_a_commit_from_another_handle(backend: Backend) -> None:
    writer = backend.create()
    first = make_records(20, texts=["plain"] * 20)
    writer.append(first)
    reader = backend.reopen(read_only=True)
    q = query(1)
    assert reader.search(q, 3, include=["special"]) == []  # also caches the filter's mask
    assert reader.refresh() is False

    texts = ["plain"] * 9 + ["special one"]
    later = make_records(10, seed=9, texts=texts, prefix="n")
    writer.append(later)
    assert reader.info.rows == 20  # a snapshot until refreshed
    assert reader.refresh() is True
    assert reader.info.rows == 30
    assert reader.refresh() is False
    assert [h.id for h in reader.search(q, 3, include=["special"])] == ["n9"]
    assert_same(reader.search(q, 30), reference(first + later, q, 30))
    assert reader.existing_ids(["n3", "r3", "zz"]) == {"n3", "r3"}


def test_image_bytes_round_trip_unchanged(backend: Backend) -> None:
    store = backend.create()
    images = [jpeg(1), None, jpeg(2, size=(300, 200))]
    records = [
        Record(id=f"i{i}", embedding=query(i), image_jpeg=img, width=24, height=16)
        for i, img in enumerate(images)
    ]
    store.append(records)
    reader = backend.reopen()
    for i, img in enumerate(images):
        assert reader.image_bytes(i) == img
    hit = reader.search(query(2), 1)[0]
    assert hit.id == "i2" and reader.image_bytes(hit) == images[2]
    with pytest.raises(StoreError, match="not in dataset"):
        reader.image_bytes(3)


def test_embedding_returns_what_was_stored(backend: Backend) -> None:
    store = backend.create()
    records = make_records(10)
    store.append(records)
    reader = backend.reopen()
    for rec in (records[0], records[9]):
        got = reader.embedding(rec.id)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, rec.embedding)
    with pytest.raises(KeyError):
        reader.embedding("nope")


def test_embeddings_at_rows_point_like_the_stored_ones(backend: Backend) -> None:
    store = backend.create()
    records = make_records(10)
    store.append(records)
    reader = backend.reopen()
    reader.search(query(0), 3)  # exact backends now hold the matrix in memory
    got = reader.embeddings_at([7, 0, 7])
    assert got.dtype == np.float32 and got.shape == (3, records[0].embedding.shape[0])
    for row, vector in zip([7, 0, 7], got, strict=True):
        expected = records[row].embedding / np.linalg.norm(records[row].embedding)
        cosine = vector @ expected / np.linalg.norm(vector)
        assert cosine == pytest.approx(1.0, abs=1e-6)
    assert reader.embeddings_at([]).shape[0] == 0
    with pytest.raises(StoreError, match="row 10 is not in dataset"):
        reader.embeddings_at([10])


def test_concurrent_searches_equal_sequential(backend: Backend) -> None:
    texts = [("red " if i % 3 else "blue ") + str(i) for i in range(500)]
    writer = backend.create()
    writer.append(make_records(500, texts=texts))
    store = backend.reopen()
    calls = [
        (query(i), 1 + i % 7, {"offset": i % 4, "include": ["red"] if i % 2 else []})
        for i in range(48)
    ]
    sequential = [store.search(q, k, **kw) for q, k, kw in calls]
    start = threading.Barrier(8)

    def run(part: int) -> list[list[Hit]]:
        start.wait()
        return [store.search(q, k, **kw) for q, k, kw in calls[part::8]]

    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(run, range(8)))
    for part, results in enumerate(parts):
        assert results == sequential[part::8]


def test_searches_stay_correct_while_another_thread_appends(backend: Backend) -> None:
    store = backend.create()
    records = make_records(300)
    store.append(records)
    reader = backend.reopen()
    q = query(5)
    expected = reader.search(q, 5)
    done = threading.Event()

    def write() -> None:
        try:
            for batch in range(5):  # rows pointing away from q never enter the top 5
                store.append(
                    [Record(id=f"w{batch}-{i}", embedding=-q + 0.01 * i) for i in range(20)]
                )
                reader.refresh()
        finally:
            done.set()

    def search(_: int) -> int:
        count = 0
        while not done.is_set() or count == 0:
            assert reader.search(q, 5) == expected
            reader.image_bytes(count % 300)
            count += 1
        return count

    with ThreadPoolExecutor(5) as pool:
        searches = [pool.submit(search, i) for i in range(4)]
        pool.submit(write).result()
        assert all(s.result() > 0 for s in searches)
    assert reader.info.rows == 400


# ----- DeepLake specifics ------------------------------------------------------------------


def test_top_indices_orders_best_first_with_ties_by_index() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, -1.0], np.float32)
    assert top_indices(scores, 3).tolist() == [1, 3, 2]
    assert top_indices(scores, 10).tolist() == [1, 3, 2, 0, 4]
    assert top_indices(scores, 0).tolist() == []


def test_open_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no dataset at .*run the ingest"):
        DeepLakeStore.open(str(tmp_path / "missing"))
    path = str(tmp_path / "ds")
    DeepLakeStore.create(path, model_name="tiny", dim=DIM).close()
    with pytest.raises(StoreError, match="already exists"):
        DeepLakeStore.create(path, model_name="tiny", dim=DIM)
    other = deeplake.create(str(tmp_path / "foreign"))
    other.add_column("x", deeplake.types.Text())
    other.commit()
    with pytest.raises(StoreError, match="not a Search All collection"):
        DeepLakeStore.open(str(tmp_path / "foreign"))


def test_open_or_create(tmp_path: Path) -> None:
    path = str(tmp_path / "ds")
    store = DeepLakeStore.open_or_create(path, model_name="tiny", dim=DIM)
    store.append(make_records(4))
    store.close()
    again = DeepLakeStore.open_or_create(path, model_name="tiny", dim=DIM)
    assert again.info.rows == 4 and not again.info.read_only
    with pytest.raises(ModelMismatchError):
        DeepLakeStore.open_or_create(path, model_name="imagebind_huge", dim=DIM)
    with pytest.raises(StoreError, match="8-d"):
        DeepLakeStore.open_or_create(path, model_name="tiny", dim=8)


def test_auto_mode_uses_deeplake_beyond_exact_max_rows() -> None:
    path = f"mem://{uuid.uuid4().hex}"
    writer = DeepLakeStore.create(path, model_name="tiny", dim=DIM)
    records = make_records(120)
    writer.append(records[:50])
    reader = DeepLakeStore.open(path, mode="auto", exact_max_rows=100)
    assert reader.info.search_mode == "exact"
    writer.append(records[50:])
    reader.refresh()
    assert reader.info.search_mode == "index"
    q = query(4)
    assert_same(reader.search(q, 7, offset=1), reference(records, q, 7, offset=1))


def test_index_path_after_building_the_index_re_ranks_exactly() -> None:
    path = f"mem://{uuid.uuid4().hex}"
    writer = DeepLakeStore.create(path, model_name="tiny", dim=DIM)
    records = make_records(1500)
    writer.append(records)
    assert writer.build_index() >= 0
    reader = DeepLakeStore.open(path, mode="index")
    for seed in range(3):  # 1500 rows and 400 candidates: the re-ranked answer is exact
        q = query(seed)
        assert_same(reader.search(q, 10), reference(records, q, 10))


def test_refresh_reads_only_appended_rows_and_reloads_after_other_changes() -> None:
    path = f"mem://{uuid.uuid4().hex}"
    writer = DeepLakeStore.create(path, model_name="tiny", dim=DIM)
    records = make_records(30)
    writer.append(records[:20])
    reader = DeepLakeStore.open(path)
    ids_before = reader._state.ids if reader._state else None  # white box: the id list grows
    writer.append(records[20:])
    assert reader.refresh()
    assert reader._state is not None and reader._state.ids is ids_before

    raw = deeplake.open(path)  # a change that is not an append: everything is read again
    raw.delete(3)
    raw.commit()
    assert reader.refresh()
    assert reader.info.rows == 29 and reader.existing_ids(["r3"]) == set()
    q = query(2)
    assert_same(reader.search(q, 29), reference(records[:3] + records[4:], q, 29))


def test_two_writers_both_keep_every_row(tmp_path: Path) -> None:
    path = str(tmp_path / "ds")
    records = make_records(6)
    first = DeepLakeStore.create(path, model_name="tiny", dim=DIM)
    first.append(records[:2])
    second = DeepLakeStore.open(path, read_only=False)
    first.append(records[2:4])
    second.append(records[4:])  # its commit merges the rows `first` added meanwhile
    assert second.info.rows == 6
    assert first.refresh() and first.info.rows == 6
    q = query(3)
    for store in (first, second, DeepLakeStore.open(path)):
        assert_same(store.search(q, 6), reference(records, q, 6))


def test_closed_store_says_so() -> None:
    store = DeepLakeStore.create(f"mem://{uuid.uuid4().hex}", model_name="tiny", dim=DIM)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.search(query(0), 3)


def test_deeplake_store_is_a_vector_store() -> None:
    with DeepLakeStore.create(f"mem://{uuid.uuid4().hex}", model_name="tiny", dim=DIM) as store:
        assert isinstance(store, VectorStore)
