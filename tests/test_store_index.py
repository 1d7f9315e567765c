"""The approximate index beside the dataset (core/store/ann): recall, growth with commits,
removals, staleness, filters, S3, and when the store uses it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from core.config import StoreSettings
from core.store.ann import files as ann_files
from core.store.ann.keeper import IndexKeeper
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from ingest.index_policy import refresh_index

DIM = 64
K = 10


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 100), dim)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)


def gaussian(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def records(vectors: np.ndarray, start: int = 0) -> list[Record]:
    """Row i's text holds `tag<i mod 100>` (1 row in 100) and `red` on odd rows."""
    return [
        Record(id=f"r{i}", embedding=v, text=f"tag{i % 100:03d}" + (" red" if i % 2 else " blue"))
        for i, v in enumerate(vectors, start)
    ]


def make_dataset(path: Path, vectors: np.ndarray, *, build: bool = True) -> DeepLakeStore:
    writer = DeepLakeStore.create(str(path), model_name="tiny", dim=vectors.shape[1], mode="index")
    writer.append(records(vectors))
    if build:
        writer.build_index()
    return writer


def ids(hits) -> list[str]:
    return [h.id for h in hits]


def recall(got: list[str], want: list[str]) -> float:
    return len(set(got) & set(want)) / len(want)


def meta(path: Path) -> dict:
    return json.loads((Path(str(path) + ".index") / "meta.json").read_text())


@pytest.mark.parametrize(("make", "dim", "bound"), [(clustered, DIM, 0.99), (gaussian, 8, 0.95)])
def test_recall_against_exact_search(tmp_path, make, dim, bound):
    both = make(4040, dim, seed=1)
    vectors, queries = both[:4000], both[4000:]  # queries like the rows, not among them
    make_dataset(tmp_path / "ds", vectors).close()
    index = DeepLakeStore.open(str(tmp_path / "ds"), mode="index")
    exact = DeepLakeStore.open(str(tmp_path / "ds"), mode="exact")
    got = np.mean([recall(ids(index.search(q, K)), ids(exact.search(q, K))) for q in queries])
    assert got >= bound
    assert index._index.current_view() is not None  # the index answered
    assert meta(tmp_path / "ds")["rows"] == 4000


def test_index_without_recall_is_refused_by_auto_and_search_stays_exact(tmp_path, caplog):
    vectors = gaussian(3000, 256, seed=3)  # no neighbourhoods: the recall check fails
    make_dataset(tmp_path / "ds", vectors).close()
    assert meta(tmp_path / "ds")["fit"] is False
    auto = DeepLakeStore.open(str(tmp_path / "ds"), mode="auto", exact_max_rows=100)
    exact = DeepLakeStore.open(str(tmp_path / "ds"), mode="exact")
    caplog.set_level(logging.WARNING)
    for q in gaussian(5, 256, seed=4):
        assert ids(auto.search(q, K)) == ids(exact.search(q, K))
    assert "recall target" in caplog.text


def test_rows_of_an_ingest_commit_are_found_then_added_without_a_rebuild(tmp_path):
    vectors = clustered(3000, DIM, seed=5)
    writer = make_dataset(tmp_path / "ds", vectors)
    built = meta(tmp_path / "ds")
    reader = DeepLakeStore.open(str(tmp_path / "ds"), mode="index")
    new = clustered(30, DIM, seed=6)
    writer.append(records(new, start=3000))  # an ingest commit
    reader.refresh()
    for i in range(0, 30, 7):
        assert reader.search(new[i], 1)[0].id == f"r{3000 + i}"
    assert reader._index.current_view() is not None  # the index, and the new rows as its tail
    what, _ = writer.update_index()  # what the ingest does when it ends
    assert what.startswith("up to date")
    after = meta(tmp_path / "ds")
    assert after["rows"] == 3030 and after["version"] == writer.info.version
    assert after["chunks"][0] == built["chunks"][0]  # the built vectors kept: rows were added
    reader.refresh()
    for i in range(0, 30, 7):
        assert reader.search(new[i], 1)[0].id == f"r{3000 + i}"


def test_removed_and_replaced_rows_are_never_returned(tmp_path):
    vectors = clustered(3000, DIM, seed=7)
    writer = make_dataset(tmp_path / "ds", vectors)
    reader = DeepLakeStore.open(str(tmp_path / "ds"), mode="index")
    reader.search(vectors[0], K)
    assert writer.delete_ids(["r10", "r11"]) == 2  # as `--sync` removes vanished files
    moved = clustered(1, DIM, seed=8)[0]
    writer.upsert([Record(id="r12", embedding=moved, text="tag012")])  # a changed file
    assert meta(tmp_path / "ds")["version"] == writer.info.version  # saved with the commits
    reader.refresh()
    for row in (10, 11):
        got = ids(reader.search(vectors[row], 50))
        assert f"r{row}" not in got and len(got) == 50
    assert "r12" not in ids(reader.search(vectors[12], 5))
    assert reader.search(moved, 1)[0].id == "r12"
    assert reader._index.current_view() is not None  # answered by the index, not exactly


def test_stale_or_missing_index_is_rebuilt_and_searches_stay_right_meanwhile(tmp_path):
    import deeplake

    vectors = clustered(2000, DIM, seed=9)
    writer = make_dataset(tmp_path / "ds", vectors, build=False)
    what, _ = writer.update_index()
    assert what.startswith("built")
    writer.close()
    raw = deeplake.open(str(tmp_path / "ds"))  # a removal the index never heard of
    raw.delete(5)
    raw.commit()
    reader = DeepLakeStore.open(str(tmp_path / "ds"), mode="index")
    exact = DeepLakeStore.open(str(tmp_path / "ds"), mode="exact")
    assert ids(reader.search(vectors[5], K)) == ids(exact.search(vectors[5], K))
    assert "r5" not in ids(reader.search(vectors[5], K))
    assert reader._index.current_view() is None  # stale: searched exactly
    writer = DeepLakeStore.open(str(tmp_path / "ds"), read_only=False, mode="index")
    what, _ = writer.update_index()
    assert what.startswith("rebuilt")
    assert meta(tmp_path / "ds")["rows"] == 1999
    reader.refresh()  # (nothing new in the dataset: the next search re-reads meta.json)
    reader._index._none_for = None
    assert "r5" not in ids(reader.search(vectors[5], K))
    assert reader._index.current_view() is not None


def test_filters_selective_exactly_and_broad_in_full_pages(tmp_path):
    both = clustered(6010, DIM, seed=10)
    make_dataset(tmp_path / "ds", both[:6000]).close()
    index = DeepLakeStore.open(str(tmp_path / "ds"), mode="index")
    exact = DeepLakeStore.open(str(tmp_path / "ds"), mode="exact")
    for q in both[6000:]:
        for words in (["tag007"], ["tag042", "red"]):  # 60 and 30 rows: searched exactly
            got, want = index.search(q, K, include=words), exact.search(q, K, include=words)
            assert ids(got) == ids(want)
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
        page = index.search(q, K, include=["red"], exclude=["tag001"])  # 2970 rows: the index
        assert len(page) == K and all("red" in h.text and "tag001" not in h.text for h in page)
        assert recall(ids(page), ids(exact.search(q, K, include=["red"], exclude=["tag001"]))) >= 0.9
        deep = index.search(q, K, include=["red"], offset=40)
        assert len(deep) == K
    assert index._index.current_view() is not None


def test_a_build_reads_the_column_in_a_child_process_and_gets_the_same_vectors(tmp_path, monkeypatch):
    from core.store import deeplake_store

    monkeypatch.setattr(deeplake_store, "_EXPORT_CHILD_MIN_ROWS", 0)
    monkeypatch.setattr(deeplake_store, "_EXPORT_ROWS", 256)  # several chunks, several handles
    started = []
    real = deeplake_store.multiprocessing.get_context

    def spying(method):
        started.append(method)
        return real(method)

    monkeypatch.setattr(deeplake_store.multiprocessing, "get_context", spying)
    vectors = clustered(1500, DIM, seed=16)
    make_dataset(tmp_path / "ds", vectors).close()
    assert started == ["spawn"]
    built = meta(tmp_path / "ds")
    saved = np.load(Path(str(tmp_path / "ds") + ".index") / built["chunks"][0][0])
    assert np.allclose(saved, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=1e-6)


def test_index_on_s3_is_written_beside_the_dataset_and_loaded_back(s3_server, s3_env, tmp_path, monkeypatch):
    monkeypatch.setattr(ann_files, "_cache_root", lambda: tmp_path / "cache")
    bucket = s3_server.new_bucket()
    path = f"s3://{bucket}/collection"
    creds = {"endpoint_url": s3_server.endpoint_url, "aws_region": "us-east-1"}
    vectors = clustered(2000, DIM, seed=12)
    writer = DeepLakeStore.create(path, model_name="tiny", dim=DIM, creds=creds, mode="index")
    writer.append(records(vectors))
    writer.build_index()
    writer.close()
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix="collection.index/")["Contents"]]
    assert "collection.index/meta.json" in keys and any(k.endswith(".faiss") for k in keys)
    monkeypatch.setattr(ann_files, "_cache_root", lambda: tmp_path / "other-cache")  # a fresh machine
    reader = DeepLakeStore.open(path, creds=creds, mode="index")
    assert reader.search(vectors[17], 1)[0].id == "r17"
    assert reader._index.current_view() is not None
    assert any((tmp_path / "other-cache").rglob("*.faiss"))


def test_exact_mode_never_touches_the_index(tmp_path, monkeypatch):
    vectors = clustered(1500, DIM, seed=13)
    make_dataset(tmp_path / "ds", vectors).close()
    before = sorted(p.name for p in Path(str(tmp_path / "ds") + ".index").iterdir())

    def refuse(*args, **kwargs):
        raise AssertionError("the index was consulted")

    for name in ("view", "update", "after_commit", "build"):
        monkeypatch.setattr(IndexKeeper, name, refuse)
    store = DeepLakeStore.open(str(tmp_path / "ds"), read_only=False, mode="exact")
    store.append(records(clustered(5, DIM, seed=14), start=1500))
    assert store.search(vectors[3], 1)[0].id == "r3"
    assert not refresh_index(store, StoreSettings(search="exact")).build
    assert sorted(p.name for p in Path(str(tmp_path / "ds") + ".index").iterdir()) == before


def test_auto_uses_the_index_only_above_exact_max_rows(tmp_path, monkeypatch):
    vectors = clustered(1500, DIM, seed=15)
    make_dataset(tmp_path / "ds", vectors).close()
    consulted = []
    view = IndexKeeper.view

    def counting(self, *args, **kwargs):
        consulted.append(1)
        return view(self, *args, **kwargs)

    monkeypatch.setattr(IndexKeeper, "view", counting)
    below = DeepLakeStore.open(str(tmp_path / "ds"), mode="auto", exact_max_rows=1500)
    assert below.info.search_mode == "exact" and below.search(vectors[1], 1)[0].id == "r1"
    assert not consulted
    above = DeepLakeStore.open(str(tmp_path / "ds"), mode="auto", exact_max_rows=1499)
    assert above.info.search_mode == "index" and above.search(vectors[1], 1)[0].id == "r1"
    assert consulted and above._index.current_view() is not None
    assert above._current().table is not None and above._current().table.unit.shape[1] == 0  # no vectors held
