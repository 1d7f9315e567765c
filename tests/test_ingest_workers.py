"""The ingest pipeline in-process: worker processes change nothing, broken images are skipped,
the index is built only when it pays."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from core.config import MediaLimits, ModelSettings, StoreSettings
from core.encoder import Encoder
from core.store.deeplake_store import DeepLakeStore
from ingest.index_policy import decide_index, refresh_index
from ingest.loader import prepare_item
from ingest.pipeline import ingest
from ingest.sources.base import ItemRef
from ingest.sources.folder import FolderSource
from tests.ingest_helpers import image_folder, rows_by_id


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load(ModelSettings(name="tiny"), MediaLimits())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, image_folder(root, 11, broken=True, png_every=4)


def run(folder, encoder, path, workers: int):
    root, _ = folder
    with DeepLakeStore.open_or_create(str(path), model_name="tiny", dim=encoder.dim) as store:
        return ingest(
            FolderSource(root), store=store, encoder=encoder, batch_size=3, workers=workers, progress=False
        )


def test_workers_give_the_same_records_as_in_process(folder, encoder, tmp_path, caplog):
    _, ids = folder
    caplog.set_level(logging.WARNING, logger="ingest.pipeline")
    in_process = run(folder, encoder, tmp_path / "w0", workers=0)
    with_workers = run(folder, encoder, tmp_path / "w2", workers=2)
    for summary in (in_process, with_workers):
        assert (summary.added, summary.skipped, summary.failed) == (11, 0, 2)
    # each broken file is logged by name, once per run, and the run went on
    logged = [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("skipping ")]
    assert sorted(logged) == sorted(["skipping broken.jpg", "skipping fake.png"] * 2)
    a, b = rows_by_id(str(tmp_path / "w0")), rows_by_id(str(tmp_path / "w2"))
    assert sorted(a) == sorted(b) == ids
    for id_ in ids:
        np.testing.assert_allclose(a[id_].embedding, b[id_].embedding, rtol=1e-5, atol=1e-6)
        assert (a[id_].image, a[id_].width, a[id_].height, a[id_].source) == (
            b[id_].image, b[id_].width, b[id_].height, b[id_].source
        )
        assert a[id_].image[:3] == b"\xff\xd8\xff"  # PNGs are kept as JPEGs


def test_workers_preprocess_exactly_as_the_encoder(folder, encoder):
    root, ids = folder
    for id_ in (ids[0], ids[3]):  # a JPEG and a PNG
        item = prepare_item(FolderSource(root), ItemRef(id_, locator=id_), encoder.limits)
        expected = encoder.prepare("image", (root / id_).read_bytes())
        assert item.error == "" and item.pixels is not None
        assert torch_equal(item.pixels, expected)
    missing = prepare_item(FolderSource(root), ItemRef("gone.jpg", locator="gone.jpg"), encoder.limits)
    assert missing.pixels is None and "gone.jpg" in missing.error


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.shape == b.shape


def test_a_second_run_skips_everything_before_decoding(folder, encoder, tmp_path, monkeypatch):
    run(folder, encoder, tmp_path / "ds", workers=0)
    opened = []
    monkeypatch.setattr(FolderSource, "read", lambda self, ref: opened.append(ref.id) or b"")
    again = run(folder, encoder, tmp_path / "ds", workers=0)
    assert (again.added, again.skipped) == (0, 11)
    assert sorted(opened) == ["broken.jpg", "fake.png"]  # only the ones that never got in


@pytest.mark.parametrize(
    ("rows", "search", "build"),
    [
        (100, "auto", False),  # exact search pays up to exact_max_rows
        (1001, "auto", True),  # built when missing or stale, new rows added, else a no-op
        (100, "index", True),
        (5000, "exact", False),
    ],
)
def test_index_is_built_only_when_it_pays(rows, search, build):
    settings = StoreSettings(search=search, exact_max_rows=1000)
    assert decide_index(rows, settings).build is build


def test_refresh_index_builds_it_and_logs_why(tmp_path, encoder, folder, caplog):
    run(folder, encoder, tmp_path / "ds", workers=0)
    caplog.set_level(logging.INFO, logger="ingest.index_policy")
    with DeepLakeStore.open(str(tmp_path / "ds"), read_only=False) as store:
        assert not refresh_index(store, StoreSettings()).build
        assert refresh_index(store, StoreSettings(search="index")).build
        hits = store.search(store.embedding("img001.jpg"), 1)
    assert hits[0].id == "img001.jpg"
    assert "exact_max_rows" in caplog.text and "building the vector index" in caplog.text
