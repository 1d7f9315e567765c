"""Latency of speech-to-text on a 5 s voice clip, and the signals of the speech decision.

    python benchmarks/bench_speech.py                     # pocketsphinx, median of 5 runs
    python benchmarks/bench_speech.py --runs 9 --whisper-model small
    python benchmarks/bench_speech.py --signals           # + the decision signals per fixture

Clips: 5.0 s of speech (two spoken fixtures of tests/fixtures/speech/, pauses around them) and
5.0 s of an engine hum (the engine fixture, repeated): noise is what makes a recogniser search
hardest. Times are wall-clock per clip after one warm-up run (and the CPU time of this process,
steadier on a shared machine); "load" is building the recogniser.

pocketsphinx runs twice: with our decoder options (`core.speech.pocketsphinx.DECODER_OPTIONS`)
and with the library's defaults, to show what the options buy. faster-whisper runs only when
`--whisper-model` names a model already on this machine (a folder, or a size in the Hugging
Face cache): the benchmark never downloads one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import MediaLimits, SpeechSettings  # noqa: E402
from core.media.audio import decode_audio  # noqa: E402
from core.speech.base import SAMPLE_RATE, Transcriber  # noqa: E402
from core.speech.pocketsphinx import PocketSphinxTranscriber  # noqa: E402
from tests.speech_fixtures import clip, clips  # noqa: E402

SECONDS = 5.0


def fixture(name: str) -> np.ndarray:
    return decode_audio(clip(name).read(), MediaLimits())


def to_length(samples: np.ndarray, seconds: float = SECONDS) -> np.ndarray:
    count = int(seconds * SAMPLE_RATE)
    return np.resize(samples, count).astype(np.float32) if samples.size < count else samples[:count]


def speech_clip() -> np.ndarray:
    """Two phrases (4.2 s) and a pause, padded with silence to 5 s, like a short voice note."""
    pause = np.zeros(SAMPLE_RATE * 3 // 10, np.float32)
    speech = np.concatenate([pause, fixture("red_car.wav"), pause, fixture("snow.wav")])
    return np.pad(speech, (0, int(SECONDS * SAMPLE_RATE) - speech.size))


def timed(make: Callable[[], Transcriber], audio: dict[str, np.ndarray], runs: int) -> dict[str, object]:
    start = time.perf_counter()
    transcriber = make()
    result: dict[str, object] = {"load_s": time.perf_counter() - start}
    for name, samples in audio.items():
        transcript = transcriber.transcribe(samples)  # warm-up
        times, cpu = [], []
        for _ in range(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            transcriber.transcribe(samples)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        result[name] = (statistics.median(times), min(times), max(times), statistics.median(cpu), transcript)
    return result


def local_whisper(name: str) -> Transcriber | None:
    from faster_whisper.utils import download_model

    from core.speech.whisper import WhisperTranscriber

    if not Path(name).expanduser().is_dir():
        try:
            download_model(name, local_files_only=True)
        except Exception:
            return None
    return WhisperTranscriber.load(SpeechSettings(engine="whisper", whisper_model=name))


def print_signals() -> None:
    transcriber = PocketSphinxTranscriber()
    print("\n| fixture | speech? | words | mean word posterior | voiced coverage | s/word |")
    print("|---|---|---|---:|---:|---:|")
    for c in clips():
        e = transcriber.listen(fixture(c.file))
        per_word = e.word_seconds / len(e.words) if e.words else 0.0
        print(f"| {c.file} | {'yes' if e.is_speech else 'no'} | {' '.join(e.words) or '-'} | "
              f"{e.mean_posterior:.2f} | {e.coverage:.2f} | {per_word:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per clip (median shown)")
    parser.add_argument("--whisper-model", help="a faster-whisper size or folder already on disk")
    parser.add_argument("--signals", action="store_true", help="print the speech signals per fixture")
    args = parser.parse_args()

    audio = {"speech": speech_clip(), "engine": to_length(fixture("engine.ogg"))}
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{load}, "
          f"{SECONDS:g} s clips, median of {args.runs} runs")  # fmt: skip
    engines: dict[str, Callable[[], Transcriber | None]] = {
        "pocketsphinx (ours)": PocketSphinxTranscriber,
        "pocketsphinx (library defaults)": lambda: PocketSphinxTranscriber({"loglevel": "FATAL"}),
    }
    if args.whisper_model:
        engines[f"faster-whisper {args.whisper_model}"] = lambda: local_whisper(args.whisper_model)
    print("\n| engine | load s | clip | median s | min-max s | CPU s | x real time | heard |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for label, make in engines.items():
        try:
            result = timed(make, audio, args.runs)  # type: ignore[arg-type]
        except AttributeError:  # local_whisper returned None
            print(f"| {label} | - | - | - | - | - | - | skipped: no model on this machine |")
            continue
        for name in audio:
            median, low, high, cpu, transcript = result[name]  # type: ignore[misc]
            heard = transcript.text if transcript.is_speech else f"(no speech) {transcript.text}".strip()
            print(f"| {label} | {result['load_s']:.2f} | {name} | {median:.2f} | {low:.2f}-{high:.2f} "
                  f"| {cpu:.2f} | {median / SECONDS:.2f} | {heard} |")  # fmt: skip
    if args.signals:
        print_signals()


if __name__ == "__main__":
    main()
