"""The committed speech fixtures (tests/fixtures/speech/, made by scripts/make_speech_fixtures.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "speech"


@dataclass(frozen=True)
class Clip:
    file: str
    kind: str  # "speech" or "sound"
    text: str
    key_words: tuple[str, ...]

    @property
    def path(self) -> Path:
        return FIXTURES / self.file

    def read(self) -> bytes:
        return self.path.read_bytes()


def clips(kind: str | None = None) -> list[Clip]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text(encoding="utf-8"))
    found = [
        Clip(e["file"], e["kind"], e["text"], tuple(e["key_words"])) for e in manifest["files"]
    ]
    return [c for c in found if kind is None or c.kind == kind]


def clip(file: str) -> Clip:
    return next(c for c in clips() if c.file == file)


def long_voice_note(seconds: float = 30.0) -> bytes:
    """An Ogg/Opus voice note of `seconds`: the spoken fixtures, half a second apart, looped."""
    import numpy as np

    from core.config import MediaLimits
    from core.media.audio import decode_audio
    from tests.media_factory import encode_audio

    gap = np.zeros(8000, np.float32)
    parts = []
    for name in ("red_car.wav", "banana.wav", "snow.wav"):
        parts += [decode_audio(clip(name).read(), MediaLimits(), sample_rate=16_000), gap]
    one = np.concatenate(parts)
    samples = np.tile(one, int(np.ceil(seconds * 16_000 / one.size)))[: int(seconds * 16_000)]
    return encode_audio(samples, "ogg", sample_rate=16_000)
