"""Ingest on Ray (`search-all ingest --ray`): a local Ray on loopback (2 CPUs), the tiny model,
60 images. Every id once, with the embeddings of the single-process pipeline; a driver killed
mid-run resumes; a decode task's process and an encoder actor killed mid-run are retried;
without --ray, Ray is not imported at all."""

from __future__ import annotations

import os

# Before Ray is imported: a Ray on this machine keeps 127.0.0.1 (not the machine's other
# address) as its node address, for the head and for drivers that connect to it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytest.importorskip("ray.data", reason="the [ray] extra is not installed")

from bot.cli import main
from core.config import MediaLimits, ModelSettings
from core.encoder import Encoder
from core.imagebind.configs import get_config
from core.store.deeplake_store import DeepLakeStore
from ingest.ray_ingest import EncoderLoader, RayOptions, ray_ingest
from tests.ingest_helpers import image_folder, rows_by_id
from tests.ray_faults import CrashingEncoderLoader, CrashingSource

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 60
MARKER = "committed "  # logged (-v) by the driver after each batch's commit
DEADLINE_S = 120.0


@pytest.fixture(scope="module")
def ray_address():
    """A Ray on this machine for the module: 2 CPUs, no dashboard, every port on 127.0.0.1;
    stopped at the end, and its processes checked gone."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=200 * 2**20,
    )
    node = ray._private.worker._global_node
    pids = [p.process.pid for procs in node.all_processes.values() for p in procs if p.process]
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:  # bounded: Ray stops them at shutdown
            alive = [pid for pid in alive if _running(pid)]
            time.sleep(0.1)
        assert not alive, f"Ray processes left running: {alive}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent has ended too
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _local_embeddings(root: Path, ids: list[str]) -> np.ndarray:
    encoder = Encoder.load(ModelSettings(name="tiny"), MediaLimits(), progress=False)
    return encoder.embed("image", [(root / id_).read_bytes() for id_ in ids])


def test_without_ray_flag_ray_is_never_imported(tmp_path):
    root = tmp_path / "images"
    image_folder(root, 3)
    code = (
        "import sys\n"
        "from bot.cli import main\n"
        f"assert main(['ingest', 'folder:{root}', '--dataset', '{tmp_path / 'ds'}', '--model', 'tiny',"
        " '--workers', '0']) == 0\n"
        "assert 'ray' not in sys.modules, 'an ingest without --ray imported Ray'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "added 3" in done.stdout


def test_ray_ingest_writes_every_image_once_with_the_pipelines_embeddings(ray_address, tmp_path, capsys):
    root = tmp_path / "images"
    ids = image_folder(root, N_IMAGES, broken=True)
    dataset = tmp_path / "ds"
    args = ["ingest", f"folder:{root}", "--dataset", str(dataset), "--model", "tiny", "--batch-size", "8"]
    assert main([*args, "--ray", ray_address]) == 0
    out = capsys.readouterr().out
    assert f"added {N_IMAGES}, skipped 0 already present, failed 2" in out  # broken.jpg, fake.png
    rows = rows_by_id(str(dataset))  # fails if an id is there twice
    assert sorted(rows) == ids
    stored = np.stack([rows[id_].embedding for id_ in ids])
    np.testing.assert_allclose(stored, _local_embeddings(root, ids), atol=1e-5)
    assert all(row.image[:3] == b"\xff\xd8\xff" and row.width > 0 for row in rows.values())

    assert main([*args, "--ray", ray_address]) == 0  # nothing left to do: nothing scheduled
    assert f"added 0, skipped {N_IMAGES} already present, failed 2" in capsys.readouterr().out


def test_killed_decode_task_and_encoder_actor_are_retried(ray_address, tmp_path):
    root = tmp_path / "images"
    ids = image_folder(root, N_IMAGES)
    decode_died, actor_died = tmp_path / "decode-died", tmp_path / "actor-died"
    source = CrashingSource(root, crash_on=ids[N_IMAGES // 2], marker=decode_died)
    tiny = ModelSettings(name="tiny", device="cpu")
    options = RayOptions(
        address=ray_address,
        encoder=CrashingEncoderLoader(EncoderLoader(tiny, MediaLimits()), marker=actor_died),
    )
    with DeepLakeStore.open_or_create(str(tmp_path / "ds"), model_name="tiny", dim=get_config("tiny").out_dim) as store:
        summary = ray_ingest(
            source, store=store, model=tiny, limits=MediaLimits(), batch_size=8, progress=False, options=options
        )
    assert decode_died.exists() and actor_died.exists()  # both deaths happened
    assert (summary.added, summary.failed) == (N_IMAGES, 0)
    assert sorted(rows_by_id(str(tmp_path / "ds"))) == ids


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def test_killed_driver_loses_only_batches_in_flight_and_rerun_completes(ray_address, tmp_path, capsys):
    root = tmp_path / "images"
    ids = image_folder(root, N_IMAGES)
    dataset = tmp_path / "ds"
    args = ["ingest", f"folder:{root}", "--dataset", str(dataset), "--model", "tiny", "--batch-size", "2"]
    child = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "-v", *args, "--ray", ray_address],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(child.stderr, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not any(MARKER in line for line in seen[-1:]):  # bounded: the first commit
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the driver ended before its first commit: {''.join(seen)[-3000:]}"
            seen.append(line)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)

    with DeepLakeStore.open(str(dataset)) as store:
        kept = store.info.rows
    assert 2 <= kept < N_IMAGES  # killed mid-run, its commits kept

    capsys.readouterr()
    assert main([*args, "--ray", ray_address]) == 0  # the cluster has ended the dead driver's work
    assert f"added {N_IMAGES - kept}, skipped {kept} already present, failed 0" in capsys.readouterr().out
    assert sorted(rows_by_id(str(dataset))) == ids  # every id, each once


def test_a_listed_hf_source_travels_without_its_opened_table(tmp_path):
    """Decode tasks on other nodes get the source pickled: the table it opened while listing (a
    memory-mapped file of this machine) stays here, and the task opens its own."""
    import pickle

    datasets = pytest.importorskip("datasets")
    from ingest.sources.huggingface import HuggingFaceSource
    from tests.media_factory import make_picture

    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": make_picture(i), "path": None} for i in range(3)], "prompt": ["a", "b", "c"]},
        features=datasets.Features({"image": datasets.Image(), "prompt": datasets.Value("string")}),
    )
    table.save_to_disk(str(tmp_path / "saved"))
    source = HuggingFaceSource(str(tmp_path / "saved"))
    refs = list(source.refs())  # opens the table
    shipped = pickle.loads(pickle.dumps(source))
    assert "_loaded" not in shipped.__dict__
    assert shipped.read(refs[1]) == make_picture(1)
