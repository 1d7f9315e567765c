"""Decode untrusted audio bytes into mono float samples at 16 kHz, within the configured limits.

PyAV (whose wheel carries FFmpeg) reads Discord voice messages (Ogg/Opus), Slack clips (M4A/AAC,
WebM/Opus, MP4), MP3, WAV, FLAC and the audio track of a video, and resamples to mono float in
the same pass. Only the demuxers of those audio containers are allowed, so FFmpeg never follows
a playlist or concat file to other files or URLs.

The duration limit is checked from the container's declared duration first, then while
decoding, frame by frame before each frame is resampled: a frame whose resampled length would
pass what is left of the limit ends decoding, so a two-hour file is never decoded in full and a
frame that claims an absurd sample rate (a FLAC frame of 4,096 samples "at 1 Hz" would become 65
million samples at 16 kHz) is refused before it costs anything. Frames below `MIN_SAMPLE_RATE`,
or whose rate differs from the clip's first frame, are refused. Clips with more channels than
FFmpeg can mix down (over 8 with no known layout) are averaged to mono here.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import av
import numpy as np

from core.config import MediaLimits
from core.errors import MediaTooLargeError, MediaTooShortError, UnsupportedMediaError
from core.media.sizes import check_file_size

DEFAULT_SAMPLE_RATE = 16_000
# Below any real recording (telephone audio is 8 kHz); a lower rate is a crafted file whose
# resampling to 16 kHz would multiply its samples.
MIN_SAMPLE_RATE = 4_000
# FFmpeg's resampler knows a mono mix-down for layouts of up to 8 channels; wider frames are
# averaged to mono in numpy first.
_MAX_RESAMPLER_CHANNELS = 8
# FFmpeg demuxer names (each may match any name of a demuxer, e.g. "mov" for mp4/m4a/3gp).
_ALLOWED_DEMUXERS = ("ogg", "matroska", "webm", "mov", "mp3", "wav", "w64", "flac", "aac",
                     "aiff", "caf")  # fmt: skip
_NOT_AUDIO = (
    "the file is not an audio clip I can read — send a voice message or an "
    "OGG, M4A, MP3, WAV, FLAC or WebM file"
)


def _seconds(value: float) -> str:
    """`12 s`, `5.3 s`, `0.04 s`, `7201 s`: few decimals, none when they are zero."""
    if value >= 1000:
        return f"{value:.0f} s"
    return f"{round(value, 1 if value >= 1 else 2):g} s"


def _too_long(seconds: float | None, limits: MediaLimits) -> MediaTooLargeError:
    limit = _seconds(limits.max_audio_seconds)
    found = f"is {_seconds(seconds)} long" if seconds is not None else f"is longer than {limit}"
    return MediaTooLargeError(f"audio clip {found}; the limit is {limit} — send a shorter clip")


def _declared_seconds(
    container: av.container.InputContainer, stream: av.AudioStream
) -> float | None:
    """The duration the file claims (stream first, then container), if it claims one."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _decoded_frames(
    container: av.container.InputContainer, stream: av.AudioStream
) -> Iterator[av.AudioFrame]:
    """Frames of `stream`; a packet the decoder rejects is skipped, as the ffmpeg tool does.

    So a damaged stretch, or MP3 files glued together, loses a frame instead of the whole clip.
    """
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            continue
        yield from frames


def _odd_rate(message: str) -> UnsupportedMediaError:
    return UnsupportedMediaError(f"the audio clip {message} — send an ordinary recording")


def _checked_rate(frame: av.AudioFrame, clip_rate: int | None) -> int:
    """The frame's sample rate, refused when absurd or different from the clip's (`clip_rate`,
    that of its first frame; FFmpeg's resampler cannot follow a change anyway)."""
    rate = frame.sample_rate
    if rate < MIN_SAMPLE_RATE:
        raise _odd_rate(f"has a sample rate of {rate} Hz; the minimum is {MIN_SAMPLE_RATE} Hz")
    if clip_rate is not None and rate != clip_rate:
        raise _odd_rate(f"changes its sample rate from {clip_rate} Hz to {rate} Hz")
    return rate


def _mono(frame: av.AudioFrame) -> av.AudioFrame:
    """A frame of more channels than FFmpeg can mix down, as the mean of its channels."""
    samples = frame.to_ndarray()
    channels = frame.layout.nb_channels
    samples = samples if frame.format.is_planar else samples.reshape(-1, channels).T
    if samples.dtype.kind in "iu":
        bits = samples.dtype.itemsize * 8
        offset = 2.0 ** (bits - 1) if samples.dtype.kind == "u" else 0.0
        mixed = (samples.mean(axis=0, dtype=np.float64) - offset) / 2.0 ** (bits - 1)
    else:
        mixed = samples.mean(axis=0, dtype=np.float64)
    mono = av.AudioFrame.from_ndarray(
        mixed.astype(np.float32)[None, :], format="flt", layout="mono"
    )
    mono.sample_rate, mono.pts, mono.time_base = frame.sample_rate, frame.pts, frame.time_base
    return mono


def _resampled_chunks(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    sample_rate: int,
    limits: MediaLimits,
) -> Iterator[np.ndarray]:
    """Mono float32 chunks of the stream at `sample_rate`, ending with the resampler's tail.

    Each frame's length at `sample_rate` is checked against what is left of
    `limits.max_audio_seconds` before it is resampled (`MediaTooLargeError`).
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    max_samples = limits.max_audio_seconds * sample_rate
    clip_rate: int | None = None
    seconds_in = 0.0  # decoded input, in seconds, up to and including this frame
    for frame in _decoded_frames(container, stream):
        clip_rate = _checked_rate(frame, clip_rate)
        seconds_in += frame.samples / clip_rate
        if seconds_in * sample_rate > max_samples:
            raise _too_long(None, limits)
        if frame.layout.nb_channels > _MAX_RESAMPLER_CHANNELS:
            frame = _mono(frame)
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1)
    for out in resampler.resample(None):
        yield out.to_ndarray().reshape(-1)


def decode_audio(
    data: bytes, limits: MediaLimits, *, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> np.ndarray:
    """Mono float32 samples at `sample_rate` of the first audio stream in `data`.

    Raises `MediaTooLargeError` (file bytes, declared or decoded duration over the limit),
    `MediaTooShortError` (under `min_audio_seconds`) or `UnsupportedMediaError` (not audio,
    damaged, no audio stream).
    """
    check_file_size(len(data), limits, what="audio file", advice="send a shorter clip")
    if not data:
        raise UnsupportedMediaError("the audio file is empty — send the clip again")
    max_samples = int(limits.max_audio_seconds * sample_rate)
    chunks: list[np.ndarray] = []
    decoded = 0
    try:
        with av.open(
            io.BytesIO(data), mode="r", options={"format_whitelist": ",".join(_ALLOWED_DEMUXERS)}
        ) as container:
            if not container.streams.audio:
                raise UnsupportedMediaError(
                    "not an audio file: it has no sound track "
                    "— send a voice message or audio clip"
                )
            stream = container.streams.audio[0]
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > limits.max_audio_seconds:
                raise _too_long(declared, limits)
            for chunk in _resampled_chunks(container, stream, sample_rate, limits):
                chunks.append(chunk)
                decoded += chunk.size
                if decoded > max_samples:
                    raise _too_long(None, limits)
    except (av.FFmpegError, ValueError, EOFError):
        # Not a container we allow, not audio, or damaged data (InvalidDataError & co.).
        raise UnsupportedMediaError(_NOT_AUDIO) from None
    if decoded == 0:
        raise UnsupportedMediaError(
            "no sound could be decoded from the audio file — send the clip again"
        )
    seconds = decoded / sample_rate
    if seconds < limits.min_audio_seconds:
        raise MediaTooShortError(
            f"audio clip is {_seconds(seconds)} long; the minimum is "
            f"{_seconds(limits.min_audio_seconds)} — send a longer clip"
        )
    return np.concatenate(chunks).astype(np.float32, copy=False)
