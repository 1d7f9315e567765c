"""Make the audio fixtures of the speech tests (tests/fixtures/speech/), and their manifest.

Spoken phrases come from a real text-to-speech, festival's `text2wave` (Debian package
`festival`; espeak-ng's voice is not understood by pocketsphinx), and are written the way chat
platforms deliver voice: Ogg/Opus (a Discord voice message), M4A/AAC (a Slack clip) and WAV.
Sounds without speech (an engine hum, noise, a tone) are synthesised here. Every file is mono,
16 kHz, a few seconds long; the compressed ones at a low bit rate, so all stay small.

    apt-get install festival
    python scripts/make_speech_fixtures.py            # writes tests/fixtures/speech/

`manifest.json` lists each file with its kind ("speech" or "sound"), the phrase spoken, and the
key words a recogniser must hear in it. The tests read the manifest; nothing in it comes from
a recogniser.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

RATE = 16_000
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech"


@dataclass(frozen=True)
class Phrase:
    name: str
    text: str
    key_words: tuple[str, ...]


PHRASES = (
    Phrase("red_car", "a red sports car at night", ("red", "sports", "car", "night")),
    Phrase("snow", "mountains covered in snow", ("mountains", "snow")),
    # pocketsphinx hears "banana" in the WAV and Ogg versions, "been on a" in the AAC one.
    Phrase("banana", "show me a yellow banana on the table", ("yellow", "table")),
)


@dataclass(frozen=True)
class Encoding:
    """A container and codec of PyAV, the way one platform sends voice."""

    suffix: str
    container: str
    codec: str
    bit_rate: int | None


ENCODINGS = (
    # 32 kbit/s: at 24 pocketsphinx lost words of two phrases ("mountains covered in snow" ->
    # "mom discovered and so" through AAC); voice messages are sent at 32 kbit/s or more.
    Encoding("ogg", "ogg", "libopus", 32_000),  # Discord voice messages: Ogg/Opus
    Encoding("m4a", "ipod", "aac", 32_000),  # Slack audio clips: M4A/AAC
    Encoding("wav", "wav", "pcm_s16le", None),
)


@dataclass(frozen=True)
class Entry:
    file: str
    kind: str  # "speech" or "sound"
    text: str  # the phrase spoken, or what the sound is
    key_words: tuple[str, ...]


def speak(text: str) -> np.ndarray:
    """`text` spoken by festival's default voice: mono float32 at 16 kHz."""
    if shutil.which("text2wave") is None:
        raise SystemExit("text2wave not found: apt-get install festival")
    with tempfile.TemporaryDirectory() as tmp:
        script, wav = Path(tmp) / "text.txt", Path(tmp) / "speech.wav"
        script.write_text(text + "\n", encoding="utf-8")
        subprocess.run(["text2wave", str(script), "-o", str(wav), "-F", str(RATE)], check=True)
        return read(wav.read_bytes())


def read(data: bytes) -> np.ndarray:
    """Mono float32 samples at 16 kHz of an audio file."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    chunks = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def write(samples: np.ndarray, encoding: Encoding) -> bytes:
    """`samples` (mono float32, 16 kHz) encoded as `encoding`."""
    buffer = io.BytesIO()
    # bitexact: no random Ogg serial number, no encoder version tag: the same bytes every run.
    with av.open(buffer, mode="w", format=encoding.container, options={"fflags": "+bitexact"}) as output:
        stream = output.add_stream(encoding.codec, rate=RATE)
        stream.layout = "mono"
        if encoding.bit_rate:
            stream.bit_rate = encoding.bit_rate
        frame_size = stream.codec_context.frame_size or 1024
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=RATE,
                                      frame_size=frame_size)  # fmt: skip
        source = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        source.sample_rate = RATE
        for frame in resampler.resample(source) + resampler.resample(None):
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def engine_hum(seconds: float = 3.0) -> np.ndarray:
    """An idling engine: harmonics of 55 Hz, throbbing 8 times a second, a little noise."""
    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * RATE)) / RATE
    hum = sum(0.3 / k * np.sin(2 * np.pi * 55 * k * t + rng.uniform(0, 6)) for k in range(1, 12))
    wave = hum * (1 + 0.3 * np.sin(2 * np.pi * 8 * t)) + 0.02 * rng.normal(size=t.size)
    return (0.8 * wave / np.abs(wave).max()).astype(np.float32)


def pink_noise(seconds: float = 3.0) -> np.ndarray:
    """Noise with a 1/f spectrum (rain, wind, a fan)."""
    rng = np.random.default_rng(2)
    spectrum = np.fft.rfft(rng.normal(size=int(seconds * RATE)))
    frequencies = np.fft.rfftfreq(int(seconds * RATE))
    frequencies[0] = frequencies[1]
    wave = np.fft.irfft(spectrum / np.sqrt(frequencies), n=int(seconds * RATE))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def tone(seconds: float = 2.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


SOUNDS = (
    ("engine", "an engine hum", engine_hum, "ogg"),
    ("noise", "pink noise", pink_noise, "m4a"),
    ("tone", "a 440 Hz tone", tone, "wav"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    by_suffix = {e.suffix: e for e in ENCODINGS}
    for phrase in PHRASES:
        samples = speak(phrase.text)
        for encoding in ENCODINGS:
            name = f"{phrase.name}.{encoding.suffix}"
            (args.out / name).write_bytes(write(samples, encoding))
            entries.append(Entry(name, "speech", phrase.text, phrase.key_words))
    for stem, what, make, suffix in SOUNDS:
        name = f"{stem}.{suffix}"
        (args.out / name).write_bytes(write(make(), by_suffix[suffix]))
        entries.append(Entry(name, "sound", what, ()))
    manifest = {"made_by": "scripts/make_speech_fixtures.py", "files": [asdict(e) for e in entries]}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total = sum((args.out / e.file).stat().st_size for e in entries)
    print(f"{len(entries)} files, {total / 1024:.0f} KiB in {args.out}")


if __name__ == "__main__":
    main()
