"""faster-whisper: the load path up to the model download, and the speech decision on its
segments. No model can be fetched here: the hub is pointed at a closed port on 127.0.0.1, so
the download fails the same way on every machine, online or not."""

import logging
import math
import socket

import pytest

from core.config import MediaLimits, SpeechSettings
from core.errors import ConfigError, ModelError
from core.query import Term
from core.speech import speech_policy, transcriber_from_settings
from core.speech.whisper import MAX_NO_SPEECH_PROB, MIN_AVG_LOGPROB, transcript_from_segments
from tests.speech_fixtures import clip

faster_whisper = pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
from faster_whisper.transcribe import Segment  # noqa: E402


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The Hugging Face hub at a closed local port, and an empty model cache."""
    import huggingface_hub.constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    return tmp_path / "hub-cache"


def whisper(model: str) -> SpeechSettings:
    return SpeechSettings(engine="whisper", whisper_model=model, whisper_device="cpu")


def test_a_model_that_cannot_be_downloaded_says_how_to_get_it(no_hub, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(ModelError) as error:
        transcriber_from_settings(whisper("tiny"), download_root=no_hub)
    message = str(error.value)
    assert "could not download the faster-whisper model 'tiny' (Systran/faster-whisper-tiny)" in message
    assert "WhisperModel('tiny')" in message
    assert "hf download Systran/faster-whisper-tiny --local-dir /models/faster-whisper-tiny" in message
    assert 'whisper_model = "/models/faster-whisper-tiny"' in message
    assert "downloading the faster-whisper model 'tiny'" in caplog.text


async def test_the_first_voice_note_reports_the_failed_download_and_the_next_retries(no_hub):
    policy = speech_policy(whisper("base.en"), MediaLimits(), download_root=no_hub)
    term = Term("audio", clip("red_car.ogg").read(), label="red_car.ogg")
    for _ in range(2):
        with pytest.raises(ModelError, match="could not download the faster-whisper model 'base.en'"):
            await policy.expand(term, "auto")
    assert policy.transcribed == 0


def test_a_folder_without_a_model_or_an_unknown_size_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a faster-whisper model folder"):
        transcriber_from_settings(whisper(str(tmp_path)))
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="could not load the model"):
        transcriber_from_settings(whisper(str(tmp_path)))
    with pytest.raises(ConfigError, match="'huge' is not a faster-whisper model"):
        transcriber_from_settings(whisper("huge"))


def segment(text: str, start: float, end: float, *, logprob: float = -0.3, no_speech: float = 0.05,
            compression: float = 1.4) -> Segment:  # fmt: skip
    return Segment(id=0, seek=0, start=start, end=end, text=text, tokens=[], avg_logprob=logprob,
                   compression_ratio=compression, no_speech_prob=no_speech, words=None,
                   temperature=0.0)  # fmt: skip


def test_only_segments_that_whisper_itself_trusts_are_heard():
    spoken = segment(" A red sports car", 0.0, 1.5)
    at_night = segment(" at night.", 1.5, 2.0, logprob=-0.7)
    silence = segment(" Thank you.", 2.0, 4.0, no_speech=MAX_NO_SPEECH_PROB + 0.1)
    garbled = segment(" Blurb zorp.", 4.0, 5.0, logprob=MIN_AVG_LOGPROB - 0.2)
    loop = segment(" the the the the the the the", 5.0, 8.0, compression=3.1)
    transcript = transcript_from_segments([spoken, silence, at_night, garbled, loop])
    assert transcript.text == "A red sports car at night." and transcript.is_speech
    expected = (1.5 * math.exp(-0.3) + 0.5 * math.exp(-0.7)) / 2.0  # duration-weighted
    assert transcript.engine == "whisper" and transcript.confidence == pytest.approx(expected)
    nothing = transcript_from_segments([silence, garbled, loop, segment("  ", 0, 1)])
    assert not nothing.is_speech and nothing.text == ""
