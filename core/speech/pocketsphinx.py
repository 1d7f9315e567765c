"""pocketsphinx 5: the offline, embedded English recogniser (its wheel ships the model).

Whether a clip is speech is decided from the recogniser's own signals, with the thresholds
below (measured on festival speech, engine hums, noise and tones; docs/speech.md has the
table). The utterance posterior (`Hypothesis.prob`) is not used: it shrinks with the number of
words (0.01 for an eight-word phrase recognised right), so it cannot separate speech from noise.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from core.errors import ModelError
from core.speech.base import SAMPLE_RATE, Transcript, check_samples

ENGINE = "pocketsphinx"

# Below this RMS level (about -60 dBFS) a clip is silence: it is not decoded at all
# (the decoder "hears" a word in digital silence).
SILENCE_RMS = 1e-3
# A recognised word's posterior probability (from the word lattice), averaged over the words.
# Clean festival speech (WAV, Opus, AAC; padded with silence; at -20 dB): 0.36-0.94 (a lone
# "sunset": 0.43-0.46). With noise at 20 dB SNR: 0.15-0.79, the lowest misheard ("sunset" as
# "found said": 0.15). Below this the words are taken for noise. A sound that yields a word
# at all often gives it a high posterior (a chirp heard as "oh": 0.98): the next two do the rest.
MIN_WORD_POSTERIOR = 0.3
# Seconds covered by recognised words over seconds the voice-activity detector marks as voiced.
# Speech: 0.40-0.95 (a lone word with 1-2 s of silence around it: 0.40-0.47). Sounds heard as
# a word or two: music 0.20, a chirp 0.20.
MIN_VOICED_COVERAGE = 0.3
# Seconds per recognised word, on average. Speech: 0.23-0.35 (one slow word: 0.63). A series of
# barks heard as one 3.3 s word: 3.3. No spoken word lasts longer than this.
MAX_MEAN_WORD_SECONDS = 1.0

# Decoder options (pocketsphinx's defaults otherwise). Noise makes the search explode: a 5 s
# engine hum took about 10 s of CPU with the library's defaults; `fwdflat` off (no second,
# flat-lexicon pass), `maxwpf` 10 words and `maxhmmpf` HMMs per frame (defaults: unlimited,
# 30000) cut it to 2.9 s at 3000 HMMs, 1.9 s at 2000, 1.3 s at 1500. At each, every spoken
# fixture (also padded with silence) kept its key words and every sound stayed no speech; 2000
# keeps a margin for real voices. Against the defaults one transcript changed a function word
# (banana.m4a: "the yellow banana and table" for "a yellow banana and the table"); `maxwpf` 5
# lost "snow" in snow.m4a. See benchmarks/bench_speech.py.
DECODER_OPTIONS: dict[str, object] = {
    "fwdflat": False,
    "maxhmmpf": 2000,
    "maxwpf": 10,
    "loglevel": "FATAL",
}

_FRAME_RATE = 100  # decoder frames per second
_ALTERNATIVE = re.compile(r"\(\d+\)$")  # "read(2)": the second pronunciation of "read"


def is_filler(word: str) -> bool:
    """Sentence markers, silence and noise tokens: <s>, </s>, <sil>, [NOISE], [SPEECH]."""
    return word.startswith(("<", "[", "+"))


@dataclass(frozen=True)
class Evidence:
    """The signals a speech decision is made from (also what the benchmark prints)."""

    words: tuple[str, ...]
    word_seconds: float
    voiced_seconds: float
    mean_posterior: float
    rms: float

    @property
    def coverage(self) -> float:
        if self.voiced_seconds <= 0:
            return 0.0
        return min(1.0, self.word_seconds / self.voiced_seconds)

    @property
    def is_speech(self) -> bool:
        return (
            bool(self.words)
            and self.rms >= SILENCE_RMS
            and self.word_seconds / len(self.words) <= MAX_MEAN_WORD_SECONDS
            and self.mean_posterior >= MIN_WORD_POSTERIOR
            and self.coverage >= MIN_VOICED_COVERAGE
        )


class PocketSphinxTranscriber:
    """One decoder, loaded once (it takes a while), used by one thread at a time."""

    name = ENGINE

    def __init__(self, options: dict[str, object] | None = None):
        try:
            from pocketsphinx import Decoder, Vad
        except ImportError:
            raise ModelError(
                'voice is read by the speech engine "pocketsphinx", which is not installed: '
                'pip install pocketsphinx, or set [speech] engine = "none" to search audio '
                "as sound"
            ) from None
        try:
            self._decoder = Decoder(samprate=SAMPLE_RATE, **(options or DECODER_OPTIONS))
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"pocketsphinx could not load its English model: {exc}") from None
        self._vad = Vad(Vad.LOOSE, SAMPLE_RATE)
        self._lock = threading.Lock()
        self._decoder.start_utt()  # see `_reset`
        self._decoder.process_raw(bytes(2 * SAMPLE_RATE // 10), full_utt=True)
        self._decoder.end_utt()

    def _reset(self) -> None:
        """Make the words depend on this clip alone, not on the clips decoded before.

        The decoder carries its cepstral mean (level normalisation) over from clip to clip,
        and its very first utterance decodes differently from later ones (banana.m4a: "yellow
        been on a buffet table" after any other clip, different scores on a fresh decoder).
        So a short silent utterance is decoded once at load, and the feature extraction is
        reset (to `cmninit`) before every clip: free, unlike a second pass over the clip.
        """
        self._decoder.reinit_feat()

    def transcribe(self, samples: np.ndarray) -> Transcript:
        evidence = self.listen(samples)
        return Transcript(
            text=" ".join(evidence.words),
            is_speech=evidence.is_speech,
            confidence=evidence.mean_posterior,
            engine=ENGINE,
        )

    def listen(self, samples: np.ndarray) -> Evidence:
        """Decode `samples` and collect the signals of `Evidence`."""
        samples = check_samples(samples)
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
        if rms < SILENCE_RMS:
            return Evidence((), 0.0, 0.0, 0.0, rms)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        with self._lock:
            voiced = self._voiced_seconds(pcm)
            self._reset()
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            segments = [s for s in self._decoder.seg() if not is_filler(s.word)]
        words = tuple(_ALTERNATIVE.sub("", s.word) for s in segments)
        frames = sum(s.end_frame - s.start_frame + 1 for s in segments)
        posterior = float(np.mean([min(1.0, s.prob) for s in segments])) if segments else 0.0
        return Evidence(words, frames / _FRAME_RATE, voiced, posterior, rms)

    def _voiced_seconds(self, pcm: bytes) -> float:
        size = self._vad.frame_bytes
        voiced = sum(
            self._vad.is_speech(pcm[start : start + size])
            for start in range(0, len(pcm) - size + 1, size)
        )
        return voiced * self._vad.frame_length
