"""Speech-to-text with pocketsphinx on real recorded-style clips, and the speech policy.

The clips are festival speech (Ogg/Opus, M4A/AAC, WAV) and synthetic sounds (engine, noise,
tone), committed under tests/fixtures/speech/; the recogniser really runs on them.
"""

import asyncio

import numpy as np
import pytest

from core.config import MediaLimits, SpeechSettings
from core.errors import BadInputError, ConfigError, MediaTooShortError
from core.media.audio import decode_audio
from core.query import Term
from core.speech import SpeechPolicy, speech_policy, transcriber_from_settings
from core.speech.base import SAMPLE_RATE, check_samples
from core.speech.pocketsphinx import PocketSphinxTranscriber
from core.speech.policy import MAX_TRANSCRIBED_SECONDS
from tests.media_factory import encode_audio, make_audio
from tests.speech_fixtures import clip, clips

LIMITS = MediaLimits()


@pytest.fixture(scope="module")
def transcriber() -> PocketSphinxTranscriber:
    return PocketSphinxTranscriber()


@pytest.fixture(scope="module")
def transcripts(transcriber):
    """Each fixture's transcript, recognised once for the module."""
    return {c.file: transcriber.transcribe(decode_audio(c.read(), LIMITS)) for c in clips()}


def policy_with(transcriber, sound_weight: float = 0.0) -> SpeechPolicy:
    return SpeechPolicy(lambda: transcriber, LIMITS, sound_weight=sound_weight)


def audio_term(name: str, weight: float = 1.0, **kwargs) -> Term:
    return Term("audio", clip(name).read(), weight, label=name, **kwargs)


def test_the_fixtures_are_small_and_cover_the_platform_formats():
    files = clips()
    assert sum(c.path.stat().st_size for c in files) < 500_000
    assert {c.path.suffix for c in clips("speech")} == {".ogg", ".m4a", ".wav"}
    assert len(clips("sound")) >= 3


@pytest.mark.parametrize("name", [c.file for c in clips("speech")])
def test_spoken_phrases_are_heard_with_their_key_words(transcripts, name):
    transcript = transcripts[name]
    assert transcript.is_speech, transcript
    assert set(clip(name).key_words) <= set(transcript.text.split()), transcript.text
    assert transcript.engine == "pocketsphinx" and 0 < transcript.confidence <= 1


@pytest.mark.parametrize("name", [c.file for c in clips("sound")])
def test_sounds_without_speech_are_not_speech(transcripts, name):
    assert not transcripts[name].is_speech, transcripts[name]


def test_the_words_depend_on_the_clip_alone(transcriber, transcripts):
    """A fresh decoder and one that decoded every other fixture first hear the same."""
    fresh = PocketSphinxTranscriber()
    for name in ["banana.m4a", "snow.m4a"]:
        assert fresh.transcribe(decode_audio(clip(name).read(), LIMITS)) == transcripts[name]


def test_digital_silence_is_not_speech(transcriber):
    """The decoder "hears" a word in all-zero audio; the level check keeps it out."""
    assert not transcriber.transcribe(np.zeros(2 * SAMPLE_RATE, np.float32)).is_speech


def test_samples_must_be_mono_and_finite():
    with pytest.raises(BadInputError, match="mono"):
        check_samples(np.zeros((2, 100), np.float32))
    with pytest.raises(BadInputError, match="invalid samples"):
        check_samples(np.array([0.0, np.nan], np.float32))


async def test_speech_becomes_a_text_term_with_the_audio_weight(transcriber, transcripts):
    policy = policy_with(transcriber)
    terms, heard = await policy.expand(audio_term("red_car.ogg", 2.0), "auto")
    expected = transcripts["red_car.ogg"].text
    assert heard == expected
    assert terms == [Term("text", expected, 2.0, label=expected)]


async def test_sound_weight_keeps_the_sound_next_to_the_words(transcriber, transcripts):
    policy = policy_with(transcriber, sound_weight=0.25)
    term = audio_term("snow.m4a", 2.0)
    terms, heard = await policy.expand(term, "speech")
    assert heard == transcripts["snow.m4a"].text
    assert [(t.modality, t.weight) for t in terms] == [("text", 2.0), ("audio", 0.5)]
    assert terms[1].payload == term.payload


async def test_a_sound_stays_a_sound_and_cannot_be_read_as_speech(transcriber):
    """(Every sound fixture is recognised as no speech above; one is enough for the policy.)"""
    policy = policy_with(transcriber, sound_weight=0.5)
    term = audio_term("tone.wav")
    assert await policy.expand(term, "auto") == ([term], "")
    with pytest.raises(BadInputError, match="no speech recognised in tone.wav"):
        await policy.expand(term, "speech")


async def test_sound_mode_and_platform_transcripts_skip_the_recogniser(transcriber):
    policy = policy_with(transcriber)
    term = audio_term("red_car.wav")
    assert await policy.expand(term, "sound") == ([term], "")
    given = audio_term("tone.wav", transcript="  a blue   whale ")
    terms, heard = await policy.expand(given, "auto")
    assert heard == "a blue whale" and terms == [Term("text", "a blue whale", 1.0, label="a blue whale")]
    assert policy.transcribed == 0


async def test_engine_none_always_searches_the_sound():
    policy = speech_policy(SpeechSettings(engine="none"), LIMITS)
    term = audio_term("red_car.ogg", transcript="a red sports car")
    assert await policy.expand(term, "auto") == ([term], "")
    with pytest.raises(BadInputError, match="speech recognition is turned off"):
        await policy.expand(term, "speech")
    assert transcriber_from_settings(SpeechSettings(engine="none")) is None


def test_pocketsphinx_refuses_other_languages_at_startup():
    with pytest.raises(ConfigError, match="English only"):
        speech_policy(SpeechSettings(engine="pocketsphinx", language="de"), LIMITS)


async def test_the_recogniser_loads_on_the_first_clip_only():
    loads = []

    def load():
        loads.append(1)
        return PocketSphinxTranscriber()

    policy = SpeechPolicy(load, LIMITS)
    await policy.expand(Term("text", "a cat"), "auto")
    await policy.expand(audio_term("tone.wav"), "sound")
    assert loads == []
    await policy.expand(audio_term("tone.wav"), "auto")
    await policy.expand(audio_term("tone.wav"), "auto")
    assert loads == [1] and policy.transcribed == 2


async def test_clips_transcribed_at_once_get_their_own_words(transcriber, transcripts):
    """Concurrent requests share one decoder; each still gets its own transcript."""
    policy = policy_with(transcriber)
    names = ["red_car.wav", "banana.wav", "snow.wav"]
    results = await asyncio.gather(*(policy.expand(audio_term(n), "auto") for n in names))
    assert [heard for _, heard in results] == [transcripts[n].text for n in names]


async def test_only_the_start_of_a_long_clip_is_transcribed(transcriber):
    """Speech after MAX_TRANSCRIBED_SECONDS of silence is not heard (and costs no decoding)."""
    speech = decode_audio(clip("red_car.wav").read(), LIMITS)
    silence = np.zeros(int((MAX_TRANSCRIBED_SECONDS + 0.5) * SAMPLE_RATE), np.float32)
    late = Term("audio", encode_audio(np.concatenate([silence, speech]), "wav"), label="late.wav")
    assert transcriber.transcribe(np.concatenate([silence[:SAMPLE_RATE], speech])).is_speech
    assert await policy_with(transcriber).expand(late, "auto") == ([late], "")


async def test_undecodable_or_short_audio_keeps_its_media_error(transcriber):
    policy = policy_with(transcriber)
    with pytest.raises(MediaTooShortError):
        await policy.expand(Term("audio", make_audio("wav", 0.3), label="short.wav"), "auto")
