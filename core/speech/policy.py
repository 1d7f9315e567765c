"""How a voice clip becomes query terms: the words spoken in it, or the sound itself.

`SpeechPolicy` implements the `AudioReader` hook of `core.service.SearchService`:

- a transcript the platform already made (Slack's `transcription.preview`) is used as is;
- otherwise the clip is decoded (16 kHz mono, within `[limits]`) and the recogniser runs on
  its first `MAX_TRANSCRIBED_SECONDS`;
- speech found: a text term of the words, with the audio term's weight, plus the sound itself
  at `weight * [speech] sound_weight` when that is above 0; "heard" is the words;
- no speech found (an engine, a dog, music): the sound term alone (`audio_as="auto"`), or a
  `BadInputError` when the user asked for speech (`audio_as="speech"`);
- `[speech] engine = "none"`: always the sound.

The recogniser runs either in a warm worker process (`RecogniserProcess`, what the bots use:
pocketsphinx holds the GIL, so in a thread it would stall the event loop) or, given a `load`
function alone, in a thread of this process, loaded on the first clip that needs it. Either
way a failed load is raised to that request and retried on the next one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from core.config import MediaLimits
from core.errors import BadInputError
from core.query import AudioAs, Term
from core.speech.base import (  # noqa: F401  (MAX_TRANSCRIBED_SECONDS: read here by tests)
    MAX_TRANSCRIBED_SECONDS,
    Transcriber,
    Transcript,
    platform_transcript,
    transcribe_clip,
)
from core.speech.process import RecogniserProcess

log = logging.getLogger(__name__)


class SpeechPolicy:
    """Reads audio terms as speech or sound (see the module docstring)."""

    def __init__(
        self,
        load: Callable[[], Transcriber] | None,
        limits: MediaLimits,
        *,
        sound_weight: float = 0.0,
        process: RecogniserProcess | None = None,
    ):
        """`load` builds the recogniser (called once, in a worker thread); None: no recogniser.
        `process`: the recogniser runs there instead (`load` then only says that there is one)."""
        self._load = load
        self.process = process
        self._transcriber: Transcriber | None = None
        self._load_lock = threading.Lock()
        self.limits = limits
        self.sound_weight = sound_weight
        self.transcribed = 0  # clips run through the recogniser (for tests and stats)

    async def expand(self, term: Term, audio_as: AudioAs) -> tuple[list[Term], str]:
        if term.modality != "audio" or audio_as == "sound":
            return [term], ""
        transcript = await self.transcript(term)
        if transcript is None or not transcript.is_speech:
            if audio_as == "speech":
                raise BadInputError(self._no_speech_message(term))
            return [term], ""
        text = transcript.text
        terms = [Term("text", text, term.weight, label=text)]
        if self.sound_weight > 0:
            terms.append(Term("audio", term.payload, term.weight * self.sound_weight, label=term.label))
        return terms, text

    async def transcript(self, term: Term) -> Transcript | None:
        """What is said in an audio term; None when speech recognition is off."""
        if self._load is None:
            return None
        given = platform_transcript(term.transcript)
        if given is not None:
            return given
        if not isinstance(term.payload, bytes):
            raise BadInputError("an audio term needs the clip's bytes")
        if self.process is not None:
            transcript = await self.process.transcribe(term.payload)
        else:
            transcript = await asyncio.to_thread(self._transcribe, term.payload)
        with self._load_lock:
            self.transcribed += 1
        log.debug(  # debug: what people say is theirs, not the log's
            "%s: %s %r (confidence %.2f, %s)",
            term.label or "audio clip",
            "heard" if transcript.is_speech else "no speech; words ignored:",
            transcript.text,
            transcript.confidence,
            transcript.engine,
        )
        return transcript

    def start(self) -> None:
        """Start the recogniser's worker process, if any, and load it (call from the loop)."""
        if self.process is not None:
            self.process.start()

    async def aclose(self) -> None:
        """Stop the recogniser's worker process, if any."""
        if self.process is not None:
            await self.process.aclose()

    def _transcribe(self, data: bytes) -> Transcript:
        return transcribe_clip(self._recogniser(), data, self.limits)

    def _recogniser(self) -> Transcriber:
        with self._load_lock:
            if self._transcriber is None:
                assert self._load is not None
                self._transcriber = self._load()
            return self._transcriber

    def _no_speech_message(self, term: Term) -> str:
        what = term.label or "the audio clip"
        if self._load is None:
            return (
                f"cannot search {what} as speech: speech recognition is turned off "
                '([speech] engine = "none") — search it as a sound instead'
            )
        return (
            f"no speech recognised in {what} — say it again closer to the microphone, "
            "or search the clip as a sound"
        )

