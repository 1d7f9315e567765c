"""A collection's life: a failed first run leaves nothing, `--overwrite` rebuilds, phone formats
(HEIC, AVIF) are read and other files are counted, and `--sync` follows changes in the folder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from core.errors import CheckpointError
from core.store.deeplake_store import DeepLakeStore
from ingest.runner import run_ingest
from tests.ingest_helpers import image_folder, rows_by_id
from tests.media_factory import make_picture


def _ingest(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["ingest", *args, "--model", "tiny", "--workers", "0", "--batch-size", "4"])
    out, err = capsys.readouterr()
    return code, out, err


# ----- item 1: a failed first run, the mismatch message, --overwrite ------------------------------


def test_failed_model_load_leaves_no_dataset_and_tiny_then_works(tmp_path, capsys, monkeypatch):
    root = tmp_path / "images"
    image_folder(root, 3)
    dataset = tmp_path / "ds"
    from core.encoder import Encoder

    real_load = Encoder.load

    def no_network(model, *args, **kwargs):
        if model.name == "imagebind_huge":
            raise CheckpointError("cannot download the checkpoint: no network")
        return real_load(model, *args, **kwargs)

    monkeypatch.setattr(Encoder, "load", staticmethod(no_network))
    capsys.readouterr()
    code = main(["ingest", f"folder:{root}", "--dataset", str(dataset), "--model", "imagebind_huge"])
    assert code == 1 and "no network" in capsys.readouterr().err
    assert not dataset.exists()  # nothing stamped imagebind_huge left behind
    code, out, err = _ingest(capsys, f"folder:{root}", "--dataset", str(dataset))
    assert code == 0, err
    assert "added 3, skipped 0 already present, failed 0" in out


def test_failure_before_the_first_commit_removes_the_new_dataset(tmp_path, capsys, monkeypatch):
    root = tmp_path / "images"
    image_folder(root, 3)
    dataset = tmp_path / "ds"

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(DeepLakeStore, "append", broken)
    code, _, err = _ingest(capsys, f"folder:{root}", "--dataset", str(dataset))
    assert code == 1 and "disk gone" in err
    assert not dataset.exists()


def test_mismatch_says_ingest_and_overwrite_rebuilds(tmp_path, capsys):
    root = tmp_path / "images"
    ids = image_folder(root, 4)
    dataset = tmp_path / "ds"
    # what a failed first run of an older version left: an empty dataset of the big model
    DeepLakeStore.create(str(dataset), model_name="imagebind_huge", dim=1024).close()
    code, _, err = _ingest(capsys, f"folder:{root}", "--dataset", str(dataset))
    assert code == 1
    assert "ingesting into it with 'tiny'" in err and "searching" not in err
    assert "--overwrite" in err and "--model imagebind_huge" in err

    code, out, err = _ingest(capsys, f"folder:{root}", "--dataset", str(dataset), "--overwrite")
    assert code == 0, err
    assert f"--overwrite: deleted dataset {dataset} (0 rows, model 'imagebind_huge')" in out
    assert "added 4, skipped 0 already present" in out
    with DeepLakeStore.open(str(dataset)) as store:
        assert store.info.model_name == "tiny" and store.info.rows == 4
    # a second --overwrite of a full dataset builds it again from nothing
    code, out, _ = _ingest(capsys, f"folder:{root}", "--dataset", str(dataset), "--overwrite")
    assert code == 0 and "(4 rows, model 'tiny')" in out and "added 4, skipped 0" in out
    assert sorted(rows_by_id(str(dataset))) == ids


# ----- item 7: HEIC / AVIF, and files skipped by type -------------------------------------------


def _encoded(seed: int, fmt: str) -> bytes:
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
    image = Image.open(io.BytesIO(make_picture(seed))).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def test_heic_and_avif_are_ingested_and_other_files_counted(tmp_path, capsys):
    root = tmp_path / "phone"
    root.mkdir()
    (root / "IMG_0001.HEIC").write_bytes(_encoded(1, "HEIF"))
    (root / "IMG_0002.heif").write_bytes(_encoded(2, "HEIF"))
    (root / "photo.avif").write_bytes(_encoded(3, "AVIF"))
    (root / "notes.txt").write_text("shopping list")
    (root / "scan.pdf").write_bytes(b"%PDF-1.4")
    (root / "more.txt").write_text("more")
    (root / ".DS_Store").write_bytes(b"\0")  # hidden: not worth a mention
    dataset = tmp_path / "ds"
    code, out, err = _ingest(capsys, f"folder:{root}", "--dataset", str(dataset))
    assert code == 0, err
    assert "added 3, skipped 0 already present, failed 0, skipped 3 not images (.pdf, .txt)" in out
    rows = rows_by_id(str(dataset))
    assert sorted(rows) == ["IMG_0001.HEIC", "IMG_0002.heif", "photo.avif"]
    assert all(row.image[:3] == b"\xff\xd8\xff" and row.width > 0 for row in rows.values())


# ----- item 8: --sync ------------------------------------------------------------------------------


def _indexed_folder(tmp_path, capsys, count: int):
    """A folder of `count` pictures, ingested: the folder, the dataset, the ingest's arguments."""
    root, dataset = tmp_path / "images", tmp_path / "ds"
    image_folder(root, count)
    args = (f"folder:{root}", "--dataset", str(dataset))
    assert _ingest(capsys, *args)[0] == 0
    return root, dataset, args


def test_sync_updates_changed_and_removes_deleted_files(tmp_path, capsys):
    root, dataset, args = _indexed_folder(tmp_path, capsys, 6)
    before = rows_by_id(str(dataset))

    (root / "img001.jpg").write_bytes(make_picture(40))  # replaced content, same name
    (root / "img002.jpg").unlink()  # deleted
    (root / "img099.jpg").write_bytes(make_picture(41))  # new
    code, out, err = _ingest(capsys, *args, "--sync")
    assert code == 0, err
    assert "added 1, updated 1, removed 1, 4 unchanged, failed 0" in out

    after = rows_by_id(str(dataset))  # also: every id once
    assert sorted(after) == sorted({*before, "img099.jpg"} - {"img002.jpg"})
    assert not np.allclose(after["img001.jpg"].embedding, before["img001.jpg"].embedding)
    assert np.allclose(after["img003.jpg"].embedding, before["img003.jpg"].embedding)
    with DeepLakeStore.open(str(dataset)) as store:
        hits = store.search(before["img002.jpg"].embedding, 20)
        assert "img002.jpg" not in {hit.id for hit in hits} and len(hits) == 6
        assert store.search(after["img001.jpg"].embedding, 1)[0].id == "img001.jpg"

    code, out, _ = _ingest(capsys, *args, "--sync")
    assert code == 0 and "added 0, updated 0, removed 0, 6 unchanged, failed 0" in out


def test_sync_of_a_dataset_without_hashes_reindexes_once(tmp_path, capsys):
    import deeplake

    _, dataset, args = _indexed_folder(tmp_path, capsys, 3)
    ds = deeplake.open(str(dataset))  # as written before content hashes existed
    ds.remove_column("content_hash")
    ds.commit("drop")
    del ds
    with DeepLakeStore.open(str(dataset)) as store:  # readable as it is
        assert store.info.rows == 3
    code, out, err = _ingest(capsys, *args, "--sync")
    assert code == 0, err
    assert "added 0, updated 3, removed 0, 0 unchanged" in out
    code, out, _ = _ingest(capsys, *args, "--sync")
    assert "added 0, updated 0, removed 0, 3 unchanged" in out


@pytest.mark.usefixtures("s3_env")
def test_sync_of_an_s3_prefix_follows_etags(s3_server, tmp_path):
    from tests.test_ingest_s3 import settings_for

    bucket = s3_server.new_bucket("phone")
    client = s3_server.client()
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"cam/img{i}.jpg", Body=make_picture(i))
    client.put_object(Bucket=bucket, Key="cam/readme.md", Body=b"# not a picture")
    dataset = str(tmp_path / "ds")
    settings = settings_for(s3_server, dataset)
    report = run_ingest(settings, f"s3://{bucket}/cam", workers=0, progress=False)
    assert "added 3, skipped 0 already present, failed 0, skipped 1 not image (.md)" in str(report)
    before = rows_by_id(dataset)

    client.put_object(Bucket=bucket, Key="cam/img0.jpg", Body=make_picture(30))  # a new ETag
    client.delete_object(Bucket=bucket, Key="cam/img1.jpg")
    summary = run_ingest(settings, f"s3://{bucket}/cam", workers=0, progress=False, sync=True).summary
    assert (summary.added, summary.updated, summary.removed, summary.skipped) == (0, 1, 1, 1)
    after = rows_by_id(dataset)
    assert sorted(after) == ["cam/img0.jpg", "cam/img2.jpg"]
    assert not np.allclose(after["cam/img0.jpg"].embedding, before["cam/img0.jpg"].embedding)
    summary = run_ingest(settings, f"s3://{bucket}/cam", workers=0, progress=False, sync=True).summary
    assert (summary.added, summary.updated, summary.removed, summary.skipped) == (0, 0, 0, 2)
