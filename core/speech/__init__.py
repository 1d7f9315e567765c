"""Speech-to-text for voice notes: recognisers (pocketsphinx, faster-whisper, the platform's own
transcript) behind one `Transcriber` interface, and the policy that turns a clip into query
terms (docs/speech.md)."""

from core.speech.base import Transcriber, Transcript
from core.speech.factory import speech_policy, transcriber_from_settings
from core.speech.policy import SpeechPolicy

__all__ = ["SpeechPolicy", "Transcriber", "Transcript", "speech_policy", "transcriber_from_settings"]
