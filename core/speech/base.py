"""What every speech recogniser gives back, and the interface it implements.

A `Transcriber` turns mono float32 samples at 16 kHz (what `core.media.audio.decode_audio`
returns) into a `Transcript`: the words, and whether the recogniser's own signals say that the
clip holds speech at all. It is blocking (a recogniser is CPU-bound): async code calls it
through `asyncio.to_thread`. Implementations are safe to call from several threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.config import MediaLimits
from core.errors import BadInputError
from core.media.audio import decode_audio

SAMPLE_RATE = 16_000

# Only the start of a clip is transcribed. The words become one text term, and ImageBind's
# text tower reads 77 tokens (about 50 words, 20 s of speech): later words could not change
# the query, and a 5-minute clip of noise would keep the recogniser busy for minutes.
MAX_TRANSCRIBED_SECONDS = 30.0


@dataclass(frozen=True)
class Transcript:
    """What a recogniser heard.

    text: the words recognised, lower case for pocketsphinx ("" when none).
    is_speech: whether the recogniser's signals say the clip is speech (see docs/speech.md);
    a clip of an engine or a dog may still yield a word or two with `is_speech` False.
    confidence: 0..1, the engine's own measure (pocketsphinx: mean word posterior; whisper:
    the mean per-token probability of the kept segments; the platform: 1).
    engine: "pocketsphinx", "whisper" or "platform".
    """

    text: str
    is_speech: bool
    confidence: float
    engine: str


class Transcriber(Protocol):
    """A speech recogniser (blocking)."""

    name: str

    def transcribe(self, samples: np.ndarray) -> Transcript:
        """What is said in `samples` (float32, mono, 16 kHz, values in -1..1)."""
        ...


def check_samples(samples: np.ndarray) -> np.ndarray:
    """`samples` as a contiguous 1-d float32 array, or a BadInputError."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise BadInputError(f"audio for speech recognition must be mono; got shape {array.shape}")
    if array.size and not np.all(np.isfinite(array)):
        raise BadInputError("the audio clip contains invalid samples (NaN or infinite) — send it again")
    return np.ascontiguousarray(array, dtype=np.float32)


def platform_transcript(text: str | None) -> Transcript | None:
    """A transcript the chat platform already made (Slack's `transcription.preview`), if any.

    The platform ran its own recogniser; a non-empty transcript is taken as speech.
    """
    words = " ".join((text or "").split())
    if not words:
        return None
    return Transcript(words, is_speech=True, confidence=1.0, engine="platform")


def transcribe_clip(transcriber: Transcriber, data: bytes, limits: MediaLimits) -> Transcript:
    """Decode a clip (16 kHz mono, within `limits`) and transcribe its first
    `MAX_TRANSCRIBED_SECONDS` (blocking: in the worker process or a thread)."""
    samples = decode_audio(data, limits, sample_rate=SAMPLE_RATE)
    return transcriber.transcribe(samples[: int(MAX_TRANSCRIBED_SECONDS * SAMPLE_RATE)])
