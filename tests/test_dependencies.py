"""The dependency set: the pythons, the torch/torchaudio pair, and what pocketsphinx brings along.

torchaudio up to 2.10 ships an extension linked against a single torch release (each wheel
requires `torch==` that release). torchaudio 2.11 is built against torch's stable ABI and works
with torch 2.11 and every later release, and with no earlier one: `import torchaudio` loads its
extension (https://docs.pytorch.org/audio/2.11.0/installation.html, the compatibility matrix).
Its 2.11.0 wheel declares no torch requirement at all (2.11.1 adds `torch>=2.11`), so pip puts
it beside any torch it is given. Hence the rule checked here: every pair that pyproject's two
ranges and the wheels' own metadata let pip install must be a pair that works.

pocketsphinx 5 declares `sounddevice` (microphone input, which needs the PortAudio library) in
every release: it gets installed, but nothing of ours may import it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# Every 2.x release number a range could admit (patch releases up to .9).
CANDIDATES = [Version(f"2.{minor}.{patch}") for minor in range(31) for patch in range(10)]
# torchaudio 2.11.x, as declared in its wheels' METADATA ("" = no torch requirement at all).
TORCHAUDIO_2_11_DECLARES = {"2.11.0": "", "2.11.1": ">=2.11"}
# Python minors each pocketsphinx release ships Linux x86_64 wheels for (PyPI's file list; the
# newest release a requirement admits is the one pip takes, building its sdist if no wheel fits).
POCKETSPHINX_WHEELS = {
    "5.0.3": {"3.10", "3.11", "3.12"},
    "5.0.4": {"3.10", "3.11", "3.12", "3.13"},
    "5.1.0": {"3.11", "3.13"},
    "5.1.1": {"3.11", "3.13"},
}


def requirement(name: str, python: str | None = None) -> SpecifierSet:
    """The specifier pyproject's `dependencies` give `name` (under `python`'s markers)."""
    environment = default_environment()
    if python is not None:
        environment |= {"python_version": python, "python_full_version": f"{python}.0"}
    found = [
        Requirement(line)
        for line in PROJECT["dependencies"]
        if Requirement(line).name == name
    ]
    active = [r for r in found if r.marker is None or r.marker.evaluate(environment)]
    assert len(active) == 1, f"{name}: {len(active)} requirements apply under Python {python}"
    return active[0].specifier


def torchaudio_works_with(torchaudio: Version) -> SpecifierSet | None:
    """The torch releases a torchaudio release works with (None: not known here)."""
    if torchaudio.major == 2 and torchaudio.minor <= 10:
        return SpecifierSet(f"=={torchaudio.major}.{torchaudio.minor}.*")
    if (torchaudio.major, torchaudio.minor) == (2, 11):
        return SpecifierSet(">=2.11")
    return None


def torchaudio_declares(torchaudio: Version) -> SpecifierSet:
    """The torch requirement a torchaudio wheel puts in its metadata: what pip enforces."""
    if torchaudio.major == 2 and torchaudio.minor <= 10:
        return SpecifierSet(f"=={torchaudio.major}.{torchaudio.minor}.*")
    return SpecifierSet(TORCHAUDIO_2_11_DECLARES.get(str(torchaudio), ""))  # unknown: none


def mel(hz: float) -> float:
    """kaldi's mel scale."""
    return 1127 * math.log(1 + hz / 700)


def supported_pythons() -> list[str]:
    accepted = SpecifierSet(PROJECT["requires-python"])
    return [f"3.{minor}" for minor in range(8, 30) if Version(f"3.{minor}.0") in accepted]


def test_every_torch_torchaudio_pair_pip_may_install_works():
    torches = list(requirement("torch").filter(CANDIDATES))
    torchaudios = list(requirement("torchaudio").filter(CANDIDATES))
    assert torches and torchaudios
    broken = []
    for torchaudio in torchaudios:
        works = torchaudio_works_with(torchaudio)
        assert works is not None, (
            f"torchaudio {torchaudio}: which torch it works with is not known here; check "
            "upstream's compatibility matrix and extend torchaudio_works_with"
        )
        installable = torchaudio_declares(torchaudio).filter(torches)
        broken += [(str(t), str(torchaudio)) for t in installable if t not in works]
    assert not broken, f"(torch, torchaudio) pairs pip may install that do not work: {broken[:5]}"


def test_every_torch_pyproject_admits_has_a_torchaudio_that_works_with_it():
    torchaudios = list(requirement("torchaudio").filter(CANDIDATES))
    lonely = [
        str(torch)
        for torch in requirement("torch").filter(CANDIDATES)
        if not any(torch in (torchaudio_works_with(a) or SpecifierSet("<0")) for a in torchaudios)
    ]
    assert not lonely, f"torch releases no admitted torchaudio works with: {lonely[:5]}"


def test_the_installed_pair_is_one_pyproject_admits_and_resamples():
    """torch and torchaudio as installed here: admitted, importable together, and torchaudio's
    resampler (the audio front end's) turns a 440 Hz tone at 44.1 and 48 kHz into the same tone
    at 16 kHz; its filter banks put the tone's energy in the mel band around 440 Hz."""
    import torch
    import torchaudio.functional
    from torchaudio.compliance import kaldi

    installed = {name: Version(version(name)) for name in ("torch", "torchaudio")}
    for name, found in installed.items():
        assert found in requirement(name), f"installed {name} {found} is outside pyproject's range"
    assert installed["torch"] in torchaudio_works_with(installed["torchaudio"])

    for rate in (44_100, 48_000):
        seconds = torch.arange(rate, dtype=torch.float64) / rate
        tone = torch.sin(2 * math.pi * 440 * seconds).float()
        resampled = torchaudio.functional.resample(tone, rate, 16_000)
        assert resampled.shape == (16_000,)
        expected = torch.sin(2 * math.pi * 440 * torch.arange(16_000, dtype=torch.float64) / 16_000)
        inner = slice(800, -800)  # the filter's edges see zeros beyond the clip
        assert (resampled[inner].double() - expected[inner]).abs().max() < 1e-3

    bins = 128
    banks = kaldi.fbank(
        resampled.unsqueeze(0) * 32768, htk_compat=True, sample_frequency=16_000,
        use_energy=False, window_type="hanning", num_mel_bins=bins, dither=0.0,
        frame_length=25, frame_shift=10,
    )
    assert banks.shape == (98, bins) and torch.isfinite(banks).all()
    step = (mel(8000) - mel(20)) / (bins + 1)
    loudest = int(banks.mean(dim=0).argmax())
    assert abs(mel(20) + (loudest + 1) * step - mel(440)) <= step


def test_a_voice_clip_is_transcribed_without_sounddevice():
    """A subprocess in which `import sounddevice` fails (as it does without PortAudio) decodes
    and transcribes a spoken clip with the default recogniser and loads every front end's entry
    module; nothing asks for sounddevice."""
    script = textwrap.dedent(
        """
        import importlib, json, sys

        asked = []

        class NoSounddevice:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("sounddevice", "_sounddevice"):
                    asked.append(name)
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
                return None

        sys.meta_path.insert(0, NoSounddevice())

        from core.config import MediaLimits, SpeechSettings
        from core.media.audio import decode_audio
        from core.speech import transcriber_from_settings
        from tests.speech_fixtures import clip

        transcriber = transcriber_from_settings(SpeechSettings())
        transcript = transcriber.transcribe(decode_audio(clip("red_car.ogg").read(), MediaLimits()))
        for module in ("bot.cli", "bot.serve", "bot.web.app", "bot.discord.bot", "bot.slack.app"):
            importlib.import_module(module)
        loaded = sorted(m for m in sys.modules if "sounddevice" in m)
        print(json.dumps({"engine": transcript.engine, "text": transcript.text,
                          "asked": asked, "loaded": loaded}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    from tests.speech_fixtures import clip

    assert result["engine"] == "pocketsphinx"
    assert set(clip("red_car.ogg").key_words) <= set(result["text"].split()), result["text"]
    assert result["asked"] == [] and result["loaded"] == []


def test_sounddevice_comes_only_from_pocketsphinx_metadata():
    """It is installed because every pocketsphinx 5 wheel requires it, not because we ask."""
    from importlib.metadata import requires

    assert not any("sounddevice" in line for line in PROJECT["dependencies"])
    declared = [Requirement(line).name for line in requires("pocketsphinx") or []]
    assert "sounddevice" in declared


@pytest.mark.parametrize("python", supported_pythons())
def test_each_supported_python_gets_a_pocketsphinx_wheel(python):
    """pip takes the newest pocketsphinx the requirement admits; for each Python that
    `requires-python` accepts it must ship a wheel (else pip compiles its sdist, which needs a
    C compiler: python:3.12-slim has none)."""
    admitted = list(requirement("pocketsphinx", python).filter(POCKETSPHINX_WHEELS))
    assert admitted, f"no known pocketsphinx release admitted under Python {python}"
    newest = max(admitted, key=Version)
    assert python in POCKETSPHINX_WHEELS[newest], f"pocketsphinx {newest} has no wheel for {python}"


def test_the_running_python_is_one_pyproject_accepts():
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert running in supported_pythons(), f"Python {running}: requires-python is {PROJECT['requires-python']}"


def test_the_readme_names_the_pythons_pyproject_accepts():
    """The README says which Pythons are supported before its first command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    top = readme.split("```bash", 1)[0]
    line = next(line for line in top.splitlines() if line.startswith("Python 3."))
    sentence = line.split(". ", 1)[0]  # "Python 3.11, 3.12 or 3.13"
    assert sorted(set(re.findall(r"\b3\.\d+\b", sentence)), key=Version) == supported_pythons()
