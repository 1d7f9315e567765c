"""The README's offline route runs as written: its `search-all` commands, from the repository's
root, on the folder of sample pictures the repository ships (docs/samples/)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from bot.cli import main

ROOT = Path(__file__).resolve().parents[1]


def offline_route() -> list[list[str]]:
    """The `search-all` commands of the README's offline-route block, split into arguments."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- offline-route -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(part.strip()) for part in " ".join(block.split()).split("&&")]
    return [command[1:] for command in commands if command and command[0] == "search-all"]


def test_the_offline_route_of_the_readme_runs_as_written(tmp_path, capsys, monkeypatch):
    commands = offline_route()
    assert [c[0] for c in commands] == ["ingest", "search"]
    samples = sorted(p.name for p in (ROOT / "docs" / "samples").glob("*.jpg"))
    assert len(samples) >= 12
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "docs").mkdir()
    (work / "docs" / "samples").symlink_to(ROOT / "docs" / "samples")  # the shipped folder
    monkeypatch.chdir(work)
    for name in [n for n in os.environ if n.startswith("SEARCH_ALL_")]:
        monkeypatch.delenv(name)
    capsys.readouterr()
    assert main(commands[0]) == 0
    assert f"added {len(samples)}" in capsys.readouterr().out
    assert main(commands[1]) == 0
    out = capsys.readouterr().out
    assert "query: a red circle" in out
    saved = sorted(p.name for p in (work / "results").iterdir())
    assert len(saved) == 5 and all(name[3:] in samples for name in saved)
