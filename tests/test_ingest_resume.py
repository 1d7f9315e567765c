"""A killed ingest resumes: SIGKILL a real `search-all ingest` mid-run, re-run, every image once."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bot.cli import main
from core.store.deeplake_store import DeepLakeStore
from tests.ingest_helpers import image_folder, rows_by_id

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 40
MARKER = "committed "  # logged (-v) by the pipeline after each batch's commit
KILL_AFTER_COMMITS = 2
DEADLINE_S = 180.0


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def test_sigkill_mid_run_then_rerun_has_every_image_exactly_once(tmp_path, capsys):
    root = tmp_path / "images"
    ids = image_folder(root, N_IMAGES)
    dataset = tmp_path / "ds"
    args = ["ingest", f"folder:{root}", "--dataset", str(dataset), "--model", "tiny", "--batch-size", "2"]
    child = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "-v", *args, "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its loader worker too can be cleaned up as a group
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(child.stderr, lines), daemon=True).start()
    commits, seen = 0, []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while commits < KILL_AFTER_COMMITS:  # bounded poll for the child's progress markers
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the ingest ended before {KILL_AFTER_COMMITS} commits: {''.join(seen)}"
            seen.append(line)
            commits += MARKER in line
        os.kill(child.pid, signal.SIGKILL)  # mid-run: it is reading, encoding or writing batch 3
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # the orphaned loader worker, if any is left
        except ProcessLookupError:
            pass
        child.wait(timeout=30)

    with DeepLakeStore.open(str(dataset)) as store:
        kept = store.info.rows
    assert KILL_AFTER_COMMITS * 2 <= kept < N_IMAGES

    capsys.readouterr()
    assert main([*args, "--workers", "0"]) == 0
    assert f"added {N_IMAGES - kept}, skipped {kept} already present, failed 0" in capsys.readouterr().out
    rows = rows_by_id(str(dataset))  # fails if any id is there twice
    assert sorted(rows) == ids
    assert all(row.image[:3] == b"\xff\xd8\xff" and row.width > 0 for row in rows.values())
