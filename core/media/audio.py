"""Decode untrusted audio bytes into mono float samples at 16 kHz, within the configured limits.

PyAV (whose wheel carries FFmpeg) reads Discord voice messages (Ogg/Opus), Slack clips (M4A/AAC,
WebM/Opus, MP4), MP3, WAV, FLAC and the audio track of a video. Only the demuxers of those audio
containers are allowed, so FFmpeg never follows a playlist or concat file to other files or URLs.

Preprocessing follows upstream ImageBind, which loads a file with `torchaudio.load` and resamples
it with `torchaudio.functional.resample` (default arguments) to 16 kHz:

- Samples are decoded at the stream's own rate and scaled to float as torchaudio scales them
  (16-bit PCM `x / 32768`).
- Channels are mixed to mono as their **mean**. This is our choice, not upstream's: upstream's
  filterbank reads channel 0 only, so the right channel of a stereo clip is ignored there. The
  mean keeps the level of a clip whose channels are alike (FFmpeg's own mono mix-down,
  (L + R) / sqrt(2), raised it by 3 dB) and hears both channels when they differ. A mono clip
  is unaffected by the choice.
- The mono samples are resampled with `torchaudio.functional.resample` in pieces of about
  `_CHUNK_SAMPLES`, each with the input its filter reaches on either side, which gives the
  samples one call on the whole clip gives (to float rounding) while holding only a piece.
  Rates whose ratio to 16 kHz would need a huge torchaudio filter (an odd rate such as
  44,056 Hz) are resampled by FFmpeg's resampler instead. A clip already at 16 kHz is not
  resampled, as upstream.

The duration limit is checked from the container's declared duration first, then while
decoding, frame by frame before each frame is converted or resampled: a frame whose resampled
length would pass what is left of the limit ends decoding, so a two-hour file is never decoded
in full and a frame that claims an absurd sample rate (a FLAC frame of 4,096 samples "at 1 Hz"
would become 65 million samples at 16 kHz) is refused before it costs anything. Frames below
`MIN_SAMPLE_RATE`, or whose rate differs from the clip's first frame, are refused. Memory stays
bounded by the output and one piece of input, whatever the clip's rate or number of channels.
"""

from __future__ import annotations

import functools
import io
import math
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
# Input samples per call of torchaudio's resampler (about 6 s at 44.1 kHz, 1 MB): few calls,
# since each has a fixed cost (large when other processes keep the cores busy: torch's threads
# then wait for one another), and little memory: a call's convolution briefly needs up to 15
# times its input (8 kHz: 15 taps a sample; 48 kHz: 41 taps every 3 samples), 15 MB at most.
_CHUNK_SAMPLES = 1 << 18
# torchaudio builds a filter of `taps` coefficients for each of the output phases; for rates
# whose ratio to 16 kHz reduces to large numbers that is millions of coefficients, and thousands
# of multiplications per output sample. Such clips go through FFmpeg's resampler instead
# (ordinary rates from 8 to 192 kHz need at most 575 taps and 300,000 coefficients).
_MAX_TAPS = 2_048
_MAX_COEFFICIENTS = 1 << 21
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


def _native_mono(frame: av.AudioFrame) -> np.ndarray:
    """The frame's samples as mono float32 at its own rate: the mean of its channels.

    Integer samples are scaled as FFmpeg and torchaudio scale them (16-bit `x / 32768`), so a
    mono frame comes out exactly as `torchaudio.load` gives it.
    """
    samples = frame.to_ndarray()
    channels = frame.layout.nb_channels
    samples = samples if frame.format.is_planar else samples.reshape(-1, channels).T
    mixed = samples[0].astype(np.float32)
    for channel in samples[1:]:  # row by row: several times faster than `mean` on integers
        mixed += channel
    if channels > 1:
        mixed /= np.float32(channels)
    if samples.dtype.kind in "iu":
        bits = samples.dtype.itemsize * 8
        if samples.dtype.kind == "u":
            mixed -= np.float32(2.0 ** (bits - 1))
        mixed *= np.float32(2.0 ** (1 - bits))  # a power of two: exact
    return mixed


@functools.lru_cache(maxsize=8)
def _torchaudio_resample(orig_freq: int, new_freq: int):  # -> torchaudio.transforms.Resample
    """`torchaudio.transforms.Resample`: `torchaudio.functional.resample` with its filter built
    once (kept for the next clip at the same rate; its `forward` only reads it).

    The function builds the filter in the waveform's dtype (float32), `Resample` by default in
    float64: asked for float32, its coefficients are the function's to the bit.
    """
    # Imported on first use: refusing a file, or a clip already at 16 kHz, never loads torch.
    import torch
    import torchaudio.transforms

    return torchaudio.transforms.Resample(
        orig_freq,
        new_freq,
        resampling_method="sinc_interp_hann",
        lowpass_filter_width=_SincResampler.LOWPASS_FILTER_WIDTH,
        rolloff=_SincResampler.ROLLOFF,
        dtype=torch.float32,
    )


class _SincResampler:
    """`torchaudio.functional.resample` with its default arguments, fed a stream in pieces
    (through `torchaudio.transforms.Resample`, the same computation with the filter kept).

    Each call gets a stretch of the input aligned to the filter's stride, with enough samples on
    either side for the outputs kept, so the output is the one a single call on the whole clip
    gives (up to float rounding) while only about `_CHUNK_SAMPLES` input samples are held.
    """

    # torchaudio's defaults (and upstream's, which passes none): a Hann-windowed sinc, six zero
    # crossings, cut-off at 0.99 of the lower Nyquist frequency.
    LOWPASS_FILTER_WIDTH = 6
    ROLLOFF = 0.99

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        self._resample = _torchaudio_resample(orig_freq, new_freq)
        common = math.gcd(orig_freq, new_freq)
        self._stride, self._phases = orig_freq // common, new_freq // common
        self._width = self._resample.width
        # Input kept before the next output block: whole strides covering the filter's reach.
        self._context = -(-self._width // self._stride) * self._stride
        self._blocks = max(1, _CHUNK_SAMPLES // self._stride)  # output blocks per call
        self._buffer = np.empty(0, np.float32)  # input from global index `_start` on
        self._start = 0
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self._done = 0  # output blocks (of `_phases` samples) given so far

    @classmethod
    def kernel_size(cls, orig_freq: int, new_freq: int) -> tuple[int, int]:
        """(taps per output sample, filter coefficients) torchaudio uses for this pair of rates."""
        common = math.gcd(orig_freq, new_freq)
        stride, phases = orig_freq // common, new_freq // common
        width = math.ceil(cls.LOWPASS_FILTER_WIDTH * stride / (min(stride, phases) * cls.ROLLOFF))
        taps = stride + 2 * width
        return taps, taps * phases

    def _run(self, begin: int, end: int | None) -> np.ndarray:
        """Output blocks from `begin` on, from the buffered input up to global index `end`
        (None: the end of the clip, giving every block that is left)."""
        import torch

        first = max(0, begin * self._stride - self._context)
        stop = None if end is None else end - self._start
        with torch.no_grad():
            out = self._resample(torch.from_numpy(self._buffer[first - self._start : stop]))
        out = out.numpy()
        return out[(begin * self._stride - first) // self._stride * self._phases :]

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        self._pending.append(samples)
        self._pending_size += samples.size
        available = self._start + self._buffer.size + self._pending_size
        need = (self._done + self._blocks) * self._stride + self._width
        if available < need:
            return
        self._buffer = np.concatenate([self._buffer, *self._pending])
        self._pending, self._pending_size = [], 0
        while available >= need:
            block_end = self._done + self._blocks
            yield self._run(self._done, need)[: self._blocks * self._phases]
            self._done = block_end
            need = (self._done + self._blocks) * self._stride + self._width
        keep_from = max(0, self._done * self._stride - self._context)
        self._buffer = self._buffer[keep_from - self._start :].copy()
        self._start = keep_from

    def finish(self) -> Iterator[np.ndarray]:
        self._buffer = np.concatenate([self._buffer, *self._pending])
        self._pending, self._pending_size = [], 0
        if self._start + self._buffer.size > self._done * self._stride:
            yield self._run(self._done, None)


class _FFmpegResampler:
    """FFmpeg's resampler on mono float frames: for pairs of rates whose torchaudio filter would
    be too large (a rate like 44,056 Hz, whose ratio to 16 kHz reduces to 5,507 / 2,000)."""

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        self._orig_freq = orig_freq
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=new_freq)

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = self._orig_freq
        for out in self._resampler.resample(frame):
            yield out.to_ndarray().reshape(-1)

    def finish(self) -> Iterator[np.ndarray]:
        for out in self._resampler.resample(None):
            yield out.to_ndarray().reshape(-1)


class _Unchanged:
    """The clip is already at the rate asked for (torchaudio returns it unchanged too)."""

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        yield samples

    def finish(self) -> Iterator[np.ndarray]:
        return iter(())


def _resampler(orig_freq: int, new_freq: int) -> _SincResampler | _FFmpegResampler | _Unchanged:
    if orig_freq == new_freq:
        return _Unchanged()
    taps, coefficients = _SincResampler.kernel_size(orig_freq, new_freq)
    if taps > _MAX_TAPS or coefficients > _MAX_COEFFICIENTS:
        return _FFmpegResampler(orig_freq, new_freq)
    return _SincResampler(orig_freq, new_freq)


def _resampled_chunks(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    sample_rate: int,
    limits: MediaLimits,
) -> Iterator[np.ndarray]:
    """Mono float32 chunks of the stream at `sample_rate`, ending with the resampler's tail.

    Each frame's length at `sample_rate` is checked against what is left of
    `limits.max_audio_seconds` before it is converted or resampled (`MediaTooLargeError`).
    """
    max_samples = limits.max_audio_seconds * sample_rate
    clip_rate: int | None = None
    resampler = None
    seconds_in = 0.0  # decoded input, in seconds, up to and including this frame
    for frame in _decoded_frames(container, stream):
        clip_rate = _checked_rate(frame, clip_rate)
        seconds_in += frame.samples / clip_rate
        if seconds_in * sample_rate > max_samples:
            raise _too_long(None, limits)
        if resampler is None:
            resampler = _resampler(clip_rate, sample_rate)
        yield from resampler.push(_native_mono(frame))
    if resampler is not None:
        yield from resampler.finish()


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
