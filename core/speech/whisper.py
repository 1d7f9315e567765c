"""faster-whisper: the quality choice (multilingual, far better on real voices than pocketsphinx).

Its models are CTranslate2 conversions of OpenAI's Whisper, downloaded from the Hugging Face
hub on first use (`small`: about 480 MB) into the hub's cache (`~/.cache/huggingface`), or read
from a local folder (`[speech] whisper_model = "/models/faster-whisper-small"`). A download that
fails becomes a `ModelError` that says how to fetch the model elsewhere.

Speech or not is decided per segment from Whisper's own signals (thresholds below, the ones
Whisper itself uses to skip silence and to retry a bad decoding), after faster-whisper's
bundled Silero voice-activity filter has dropped the stretches without voice.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.config import SpeechSettings
from core.errors import ConfigError, ModelError
from core.speech.base import Transcript, check_samples

log = logging.getLogger(__name__)

ENGINE = "whisper"

# A segment whose "no speech" token probability is at or above this is silence or noise
# (Whisper's own `no_speech_threshold`).
MAX_NO_SPEECH_PROB = 0.6
# A segment whose mean token log-probability is below this was decoded badly: Whisper retries
# such segments at a higher temperature (`log_prob_threshold`); we do not trust its words.
MIN_AVG_LOGPROB = -1.0
# A segment more compressible than this (gzip ratio) is a repetition loop, a known Whisper
# hallucination on noise (`compression_ratio_threshold`).
MAX_COMPRESSION_RATIO = 2.4
BEAM_SIZE = 5

_DOWNLOAD_HELP = (
    "on a machine with internet run `python -c \"from faster_whisper import WhisperModel; "
    "WhisperModel('{name}')\"` (the model lands in ~/.cache/huggingface; copy that folder "
    "over), or `hf download {repo} --local-dir /models/{folder}` and set "
    '[speech] whisper_model = "/models/{folder}"; or set [speech] engine = '
    '"pocketsphinx" (offline, English)'
)


class WhisperSegment(Protocol):
    """The fields of `faster_whisper.transcribe.Segment` that the speech decision reads."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


def segment_is_speech(segment: WhisperSegment) -> bool:
    return (
        bool(segment.text.strip())
        and segment.no_speech_prob < MAX_NO_SPEECH_PROB
        and segment.avg_logprob >= MIN_AVG_LOGPROB
        and segment.compression_ratio <= MAX_COMPRESSION_RATIO
    )


def transcript_from_segments(segments: Iterable[WhisperSegment]) -> Transcript:
    """The words of the segments that are speech; confidence: their mean token probability
    (exp of the mean log-probability), weighted by duration."""
    kept = [s for s in segments if segment_is_speech(s)]
    if not kept:
        return Transcript("", is_speech=False, confidence=0.0, engine=ENGINE)
    text = " ".join(" ".join(s.text.split()) for s in kept)
    durations = np.array([max(s.end - s.start, 1e-3) for s in kept])
    probabilities = np.array([math.exp(s.avg_logprob) for s in kept])
    confidence = float(np.sum(durations * probabilities) / np.sum(durations))
    return Transcript(text, is_speech=True, confidence=confidence, engine=ENGINE)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or Path(name).expanduser().is_dir()


def resolve_model(name: str, download_root: Path | None = None) -> str:
    """A local folder holding the CTranslate2 model `name` (a size, a hub id or a folder).

    Downloads it on first use, saying so in the log; a failed download is a ModelError with
    the ways to get the model onto this machine.
    """
    from faster_whisper.utils import available_models, download_model

    if _looks_like_path(name):
        folder = Path(name).expanduser()
        if not (folder / "model.bin").is_file():
            raise ModelError(
                f"[speech] whisper_model {name!r} is not a faster-whisper model folder (no "
                "model.bin in it): point it at a folder made by `hf download "
                "Systran/faster-whisper-small --local-dir DIR`, or use a size such as \"small\""
            )
        return str(folder)
    if "/" not in name and name not in available_models():
        raise ConfigError(
            f"[speech] whisper_model {name!r} is not a faster-whisper model: use one of "
            f"{', '.join(available_models())}, a hub id (Systran/faster-whisper-small) or a folder"
        )
    cache_dir = str(download_root) if download_root else None
    repo = name if "/" in name else f"Systran/faster-whisper-{name}"
    try:
        return download_model(name, local_files_only=True, cache_dir=cache_dir)
    except Exception:  # not cached yet (LocalEntryNotFoundError and kin): download it
        pass
    where = download_root or "the Hugging Face cache (~/.cache/huggingface)"
    log.warning(
        "downloading the faster-whisper model %r (%s) from the Hugging Face hub into %s: "
        "first use only, this can take minutes",
        name, repo, where,
    )  # fmt: skip
    try:
        return download_model(name, cache_dir=cache_dir)
    except Exception as exc:  # any download failure is something the operator must fix
        reason = " ".join(str(exc).split())[:300].rstrip(".") or type(exc).__name__
        raise ModelError(
            f"could not download the faster-whisper model {name!r} ({repo}) from the Hugging "
            f"Face hub: {reason}. To use it without hub access, "
            + _DOWNLOAD_HELP.format(name=name, repo=repo, folder=repo.split("/")[-1])
        ) from None


class WhisperTranscriber:
    """A loaded faster-whisper model; one transcription at a time."""

    name = ENGINE

    def __init__(self, model: Any, *, language: str):
        self._model = model
        self._language = None if language == "auto" else language
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: SpeechSettings, *, download_root: Path | None = None) -> WhisperTranscriber:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ModelError(
                'speech engine "whisper" is not installed: pip install "search-all[whisper]", '
                'or set [speech] engine = "pocketsphinx"'
            ) from None
        path = resolve_model(settings.whisper_model, download_root)
        device = settings.whisper_device
        try:
            model = WhisperModel(path, device=device, compute_type=settings.whisper_compute_type)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(
                f"faster-whisper could not load the model {settings.whisper_model!r} on device "
                f"{device!r} with compute type {settings.whisper_compute_type!r}: {exc} — check "
                "that its folder holds a complete model, and [speech] whisper_device and "
                'whisper_compute_type ("default" suits every device)'
            ) from None
        log.info("faster-whisper model %r loaded (%s)", settings.whisper_model, device)
        return cls(model, language=settings.language)

    def transcribe(self, samples: np.ndarray) -> Transcript:
        samples = check_samples(samples)
        with self._lock:
            segments, _info = self._model.transcribe(
                samples,
                language=self._language,
                beam_size=BEAM_SIZE,
                condition_on_previous_text=False,
                vad_filter=True,
            )
            return transcript_from_segments(list(segments))
