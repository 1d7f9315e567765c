"""The recogniser and the speech policy that `[speech]` asks for."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from core.config import MediaLimits, SpeechSettings
from core.errors import ConfigError
from core.speech.base import Transcriber
from core.speech.policy import SpeechPolicy
from core.speech.process import RecogniserProcess


def check_settings(settings: SpeechSettings) -> None:
    """Refuse combinations that cannot work (checked at startup, before any clip arrives)."""
    if settings.engine == "pocketsphinx" and not settings.language.lower().startswith("en"):
        raise ConfigError(
            f'[speech] engine = "pocketsphinx" recognises English only, but language = '
            f'{settings.language!r}: set engine = "whisper" for other languages'
        )


def transcriber_from_settings(
    settings: SpeechSettings, *, download_root: Path | None = None
) -> Transcriber | None:
    """Load the recogniser of `[speech] engine` (blocking: seconds; whisper may download).

    None for engine "none". `download_root`: where whisper models are cached (default: the
    Hugging Face cache).
    """
    check_settings(settings)
    if settings.engine == "none":
        return None
    if settings.engine == "pocketsphinx":
        from core.speech.pocketsphinx import PocketSphinxTranscriber

        return PocketSphinxTranscriber()
    from core.speech.whisper import WhisperTranscriber

    return WhisperTranscriber.load(settings, download_root=download_root)


def speech_policy(
    settings: SpeechSettings,
    limits: MediaLimits,
    *,
    download_root: Path | None = None,
    in_process: bool = False,
) -> SpeechPolicy:
    """The `AudioReader` for `SearchService`. `in_process`: the recogniser runs in a warm worker
    process (`policy.start()` starts it, `policy.aclose()` stops it); otherwise in a thread,
    loaded on the first voice clip."""
    check_settings(settings)
    load: Callable[[], Transcriber] | None = None
    if settings.engine != "none":

        def load() -> Transcriber:
            transcriber = transcriber_from_settings(settings, download_root=download_root)
            assert transcriber is not None
            return transcriber

    process = None
    if load is not None and in_process:
        process = RecogniserProcess(
            partial(transcriber_from_settings, settings, download_root=download_root),
            limits,
            max_queued=settings.max_queued_clips,
            timeout_s=settings.clip_timeout_s,
        )
    return SpeechPolicy(load, limits, sound_weight=settings.sound_weight, process=process)
