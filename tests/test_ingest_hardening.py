"""Issue 17's ingest items: one writer per dataset, a full disk's empty commit counter, folder
links and huge files, an interrupted create, S3 objects that vanished, orphaned workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import deeplake
import pytest

from bot.cli import main
from core.errors import StoreError
from core.s3.client import S3Connection
from core.store.deeplake_store import DeepLakeStore
from ingest.writer_lock import writer_lock
from tests.bad_inputs import FOLDER_ENTRIES
from tests.fakes.s3_server import ACCESS_KEY, REGION, SECRET_KEY
from tests.ingest_helpers import image_folder, rows_by_id
from tests.media_factory import make_picture

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny"]


# bot.cli run as __main__, reporting its peak memory (VmHWM, this program's own: ru_maxrss would
# count the test process it was forked from) on stderr at exit
PEAK = (
    "import atexit, runpy, sys; atexit.register(lambda: print('peak kB', open('/proc/self/status')"
    ".read().split('VmHWM:')[1].split()[0], file=sys.stderr)); sys.argv[0] = 'search-all';"
    " runpy.run_module('bot.cli', run_name='__main__')"
)


def cli(*args: str, workers: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PEAK, *args, *TINY, "--workers", str(workers)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def poll(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


# ----- item 5: two ingests into one dataset ---------------------------------------------------


def test_two_ingests_at_once_write_every_image_once(tmp_path):
    root = tmp_path / "images"
    ids = image_folder(root, 24)
    dataset = tmp_path / "ds"
    DeepLakeStore.create(str(dataset), model_name="tiny", dim=64).close()  # both open, neither creates
    args = ["ingest", f"folder:{root}", "--dataset", str(dataset), "--batch-size", "2"]
    children = [cli(*args), cli(*args)]
    results = [(child.wait(timeout=180), *child.communicate()) for child in children]
    assert sorted(rows_by_id(str(dataset))) == ids  # every id exactly once
    assert any(code == 0 for code, _, _ in results)
    for code, _, err in results:
        assert code == 0 or "another ingest is writing to" in err, err


def test_the_lock_refuses_a_second_writer_and_is_freed_after(tmp_path):
    dataset = str(tmp_path / "ds")
    with writer_lock(dataset):
        with pytest.raises(StoreError, match=rf"another ingest is writing to .*pid {os.getpid()}"):
            with writer_lock(dataset):
                pass
    with writer_lock(dataset):  # released with its holder
        pass


def test_a_process_forked_while_the_lock_is_held_does_not_keep_it(tmp_path):
    """A loader worker outliving a killed ingest must not make the re-run wait for it."""
    dataset = str(tmp_path / "ds")
    started_r, started_w = os.pipe()
    release_r, release_w = os.pipe()
    with writer_lock(dataset):
        worker = os.fork()
        if worker == 0:  # the "worker": says it runs, stays alive until told, does nothing else
            os.write(started_w, b"x")
            os.read(release_r, 1)
            os._exit(0)
        os.read(started_r, 1)
    try:
        with writer_lock(dataset):  # the holder is gone; its worker is still alive
            pass
    finally:
        os.write(release_w, b"x")
        os.waitpid(worker, 0)
        for fd in (started_r, started_w, release_r, release_w):
            os.close(fd)


@pytest.mark.usefixtures("s3_env")
def test_the_s3_lock_object_refuses_then_goes_stale(s3_server, monkeypatch):
    import ingest.writer_lock as lock

    bucket = s3_server.new_bucket("locks")
    connection = S3Connection(s3_server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY)
    dataset = f"s3://{bucket}/collection"
    with writer_lock(dataset, connection):
        assert s3_server.client().get_object(Bucket=bucket, Key="collection.lock")["Body"].read()
        with pytest.raises(StoreError, match="another ingest is writing to"):
            with writer_lock(dataset, connection):
                pass
        monkeypatch.setattr(lock, "STALE_S", -1.0)  # as if its holder had died long ago
        with writer_lock(dataset, connection):
            pass
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    assert listed["KeyCount"] == 0  # released


# ----- item 6: a full disk leaves next_base empty ---------------------------------------------


def _branch_counter(dataset: Path) -> Path:
    [counter] = [p for p in dataset.glob("_deeplake_log/*/next_base") if p.parent.name != "_meta"]
    return counter


def test_an_empty_commit_counter_is_repaired_and_the_rerun_completes(tmp_path, capsys):
    root = tmp_path / "images"
    ids = image_folder(root, 6)
    dataset = tmp_path / "ds"
    args = ["ingest", f"folder:{root}", "--dataset", str(dataset), *TINY, "--workers", "0", "--batch-size", "2"]
    assert main(args) == 0
    counter = _branch_counter(dataset)
    good = counter.read_bytes()
    counter.write_bytes(b"")  # what a write that failed for space leaves
    for i in range(6, 9):
        (root / f"more{i}.jpg").write_bytes(make_picture(100 + i))
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    assert "added 3, skipped 6" in capsys.readouterr().out
    assert sorted(rows_by_id(str(dataset))) == sorted([*ids, "more6.jpg", "more7.jpg", "more8.jpg"])
    assert int.from_bytes(counter.read_bytes(), "little") == int.from_bytes(good, "little") + 2


# ----- item 7: folder links and huge files --------------------------------------------------


def test_links_out_of_the_folder_and_huge_files(tmp_path, capsys):
    root = tmp_path / "images"
    ids = image_folder(root, 3)
    outside = tmp_path / "private"
    outside.mkdir()
    for entry in FOLDER_ENTRIES:  # the bad-input corpus: a link out of the folder, a 2.5 GB file
        entry.make(root, outside)
    (root / "inner.jpg").symlink_to(root / ids[0])  # a link inside the folder is fine
    dataset = tmp_path / "ds"
    args = ["ingest", f"folder:{root}", "--dataset", str(dataset), "--batch-size", "4"]
    child = cli(*args)
    out, err = child.communicate(timeout=180)
    assert child.returncode == 0, err
    assert "added 4, skipped 0 already present, failed 1" in out
    for entry in FOLDER_ENTRIES:
        assert all(fragment in err for fragment in entry.expect), entry.name
    assert int(err.split("peak kB ")[1].split()[0]) * 1024 < 1_500_000_000  # 2.5 GB never read
    assert sorted(rows_by_id(str(dataset))) == sorted([*ids, "inner.jpg"])

    capsys.readouterr()
    assert main([*args, *TINY, "--workers", "0", "--follow-links"]) == 0
    assert "added 1, skipped 4 already present, failed 1" in capsys.readouterr().out
    assert rows_by_id(str(dataset))["link.jpg"].image == make_picture(77)


# ----- item 13: a crash between creating a dataset and stamping it ------------------------------


def test_an_empty_unstamped_dataset_is_finished_by_the_next_ingest(tmp_path, capsys):
    root = tmp_path / "images"
    ids = image_folder(root, 4)
    dataset = tmp_path / "ds"
    deeplake.create(str(dataset))  # and the process died before the first commit
    assert main(["ingest", f"folder:{root}", "--dataset", str(dataset), *TINY, "--workers", "0"]) == 0
    assert "added 4" in capsys.readouterr().out
    assert sorted(rows_by_id(str(dataset))) == ids
    with DeepLakeStore.open(str(dataset), expect_model="tiny") as store:
        assert store.info.dim == 64


def test_a_dataset_with_rows_but_no_stamp_is_still_refused(tmp_path):
    dataset = tmp_path / "ds"
    ds = deeplake.create(str(dataset))
    ds.add_column("id", deeplake.types.Text())
    ds.append({"id": ["someone else's"]})
    ds.commit()
    with pytest.raises(StoreError, match="not a Search All collection"):
        DeepLakeStore.open_or_create(str(dataset), model_name="tiny", dim=64)


# ----- item 14: S3 objects that vanished are put back by a re-run -----------------------------


@pytest.mark.usefixtures("s3_env")
@pytest.mark.parametrize("keep", [True, False], ids=["from-dataset-copy", "from-source"])
def test_a_rerun_puts_back_images_gone_from_s3(s3_server, tmp_path, capsys, keep):
    bucket = s3_server.new_bucket("images")
    root = tmp_path / "images"
    ids = image_folder(root, 5)
    config = tmp_path / "s3.toml"
    config.write_text(
        s3_server.config_toml()
        + f'[s3]\nbucket = "{bucket}"\nupload_images = true\nurl_mode = "presigned"\n'
        + f"keep_in_dataset = {'true' if keep else 'false'}\n"
    )
    args = ["ingest", f"folder:{root}", "--config", str(config), "--dataset", str(tmp_path / "ds"), *TINY]
    assert main([*args, "--workers", "0"]) == 0
    rows = rows_by_id(str(tmp_path / "ds"))
    client = s3_server.client()
    gone = [rows[ids[1]].s3_key, rows[ids[3]].s3_key]
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in gone]})
    capsys.readouterr()
    assert main([*args, "--workers", "0"]) == 0
    assert "added 0, skipped 5 already present, failed 0, put back 2 missing from S3" in capsys.readouterr().out
    for id_ in ids:
        body = client.get_object(Bucket=bucket, Key=rows[id_].s3_key)["Body"].read()
        assert body == (root / id_).read_bytes()


# ----- item 15: workers of a killed ingest exit ---------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_workers_exit_when_the_ingest_is_killed(tmp_path):
    root = tmp_path / "images"
    image_folder(root, 96)
    # big batches: a worker's pending batches fill its pipe, so it blocks writing, where torch's
    # own check of the parent never runs
    child = cli("ingest", f"folder:{root}", "--dataset", str(tmp_path / "ds"), "--batch-size", "24", workers=2)
    workers: list[int] = []
    try:
        workers = poll(lambda: (kids := _children(child.pid)) and len(kids) >= 2 and kids, 120, "two workers started")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        # they die with it (PR_SET_PDEATHSIG); torch's own watchdog would take 5 s at best, or never
        poll(lambda: not any(_alive(pid) for pid in workers), 3, "the orphaned workers exited")
    finally:
        for pid in [child.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
