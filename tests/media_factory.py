"""Test media made in code: images with Pillow, audio clips with PyAV's bundled encoders.

Everything is deterministic (fixed seeds) and small, so tests stay fast. Reuse these helpers
rather than committing binary fixtures.

Audio formats (`AUDIO_FORMATS`): ogg (Opus, as Discord voice messages), webm (Opus), m4a (AAC,
as Slack clips), mp4 (AAC), mp3 (LAME), wav (16-bit PCM), flac.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageDraw

Color = tuple[int, int, int]
AudioKind = Literal["sine", "noise", "silence"]


# --------------------------------------------------------------------------- images


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Random pixels (RGB or RGBA), reproducible from `seed`."""
    channels = len(mode)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


def solid_image(width: int, height: int, color: Color = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def two_tone_image(
    width: int, height: int, left: Color = (255, 0, 0), right: Color = (0, 0, 255)
) -> Image.Image:
    """Left half `left`, right half `right`: shows rotations and flips."""
    image = solid_image(width, height, right)
    image.paste(left, (0, 0, width // 2, height))
    return image


def exif_orientation(orientation: int) -> Image.Exif:
    """An EXIF block with only the orientation tag (1..8), for `encode(..., exif=...)`."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _picture(width: int, height: int, color: Color | None, seed: int) -> Image.Image:
    if color is not None:
        return solid_image(width, height, color)
    return noise_image(width, height, seed)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """`image` saved in Pillow format `fmt` (PNG, JPEG, GIF, WEBP, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def make_jpeg(
    width: int = 64,
    height: int = 48,
    color: Color | None = None,
    seed: int = 0,
    quality: int = 90,
    orientation: int | None = None,
) -> bytes:
    """A JPEG, solid `color` or noise from `seed`; `orientation` sets the EXIF tag (1..8)."""
    params: dict[str, object] = {"quality": quality}
    if orientation is not None:
        params["exif"] = exif_orientation(orientation)
    return encode(_picture(width, height, color, seed), "JPEG", **params)


def make_png(
    width: int = 64, height: int = 48, color: Color | None = None, seed: int = 0
) -> bytes:
    return encode(_picture(width, height, color, seed), "PNG")


def make_webp(
    width: int = 64, height: int = 48, color: Color | None = None, seed: int = 0
) -> bytes:
    return encode(_picture(width, height, color, seed), "WEBP", lossless=True)


def make_gif(width: int = 64, height: int = 48, color: Color = (200, 30, 30)) -> bytes:
    return encode(solid_image(width, height, color), "GIF")


def make_animated_gif(colors: list[Color], width: int = 32, height: int = 32) -> bytes:
    """An animated GIF whose frame `i` is filled with `colors[i]`."""
    frames = [solid_image(width, height, c) for c in colors]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def make_png_with_mode(image: Image.Image) -> bytes:
    """PNG of an image in any PNG-capable mode (P, RGBA, LA, I;16, ...)."""
    return encode(image, "PNG")


def make_cmyk_jpeg(
    width: int = 32, height: int = 32, cmyk: tuple[int, int, int, int] = (0, 255, 255, 0)
) -> bytes:
    """A CMYK JPEG (default: pure red ink)."""
    return encode(Image.new("CMYK", (width, height), cmyk), "JPEG", quality=95)


def make_png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is rewritten to claim `width` x `height` (CRC fixed).

    Costs a few bytes; a decoder that trusts the header would allocate width*height pixels.
    """
    png = bytearray(make_png(1, 1, color=(0, 0, 0)))
    # Signature (8) + chunk length (4) + b"IHDR" (4), then width, height.
    assert png[12:16] == b"IHDR"
    png[16:24] = struct.pack(">II", width, height)
    ihdr_data = bytes(png[12:29])  # type + 13 data bytes
    png[29:33] = struct.pack(">I", zlib.crc32(ihdr_data) & 0xFFFFFFFF)
    return bytes(png)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first `keep` fraction of `data` (an interrupted download)."""
    return data[: max(1, int(len(data) * keep))]


def random_bytes(size: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------- audio


@dataclass(frozen=True)
class AudioFormat:
    """How to write one kind of audio file with PyAV."""

    container: str
    codec: str
    sample_rate: int


AUDIO_FORMATS: dict[str, AudioFormat] = {
    "ogg": AudioFormat("ogg", "libopus", 48_000),  # Discord voice messages
    "webm": AudioFormat("webm", "libopus", 48_000),
    "m4a": AudioFormat("ipod", "aac", 44_100),  # Slack audio clips
    "mp4": AudioFormat("mp4", "aac", 44_100),
    "mp3": AudioFormat("mp3", "libmp3lame", 44_100),
    "wav": AudioFormat("wav", "pcm_s16le", 16_000),
    "flac": AudioFormat("flac", "flac", 44_100),
}


def waveform(
    seconds: float,
    sample_rate: int = 16_000,
    kind: AudioKind = "sine",
    frequency: float = 440.0,
    amplitude: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Mono float32 samples: a sine tone, Gaussian noise (std = amplitude / 3) or silence."""
    count = int(round(seconds * sample_rate))
    if kind == "sine":
        t = np.arange(count) / sample_rate
        samples = amplitude * np.sin(2 * np.pi * frequency * t)
    elif kind == "noise":
        rng = np.random.default_rng(seed)
        samples = np.clip(rng.normal(0.0, amplitude / 3, count), -1.0, 1.0)
    elif kind == "silence":
        samples = np.zeros(count)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return samples.astype(np.float32)


def encode_audio(
    samples: np.ndarray, fmt: str, sample_rate: int | None = None, channels: int = 1
) -> bytes:
    """Encode mono float samples (at the format's rate unless given) into `fmt`."""
    return encode_channels(np.repeat(samples[None, :], channels, axis=0), fmt, sample_rate)


def encode_channels(planar: np.ndarray, fmt: str, sample_rate: int | None = None) -> bytes:
    """Encode float samples `[channels, n]` (1 or 2 channels: mono or stereo) into `fmt`."""
    spec = AUDIO_FORMATS[fmt]
    rate = sample_rate or spec.sample_rate
    layout = {1: "mono", 2: "stereo"}[planar.shape[0]]
    planar = planar.astype(np.float32)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=spec.container) as output:
        stream = output.add_stream(spec.codec, rate=rate)
        stream.layout = layout
        chunk = 4096
        for start in range(0, planar.shape[1], chunk):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, start : start + chunk]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def decode_native(data: bytes) -> tuple[np.ndarray, int]:
    """Float32 samples `[channels, n]` at the file's own rate, scaled as `torchaudio.load` scales
    them (16-bit PCM `x / 32768`), and that rate: what upstream ImageBind's loader starts from."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        frames = [out.to_ndarray() for frame in container.decode(stream)
                  for out in resampler.resample(frame)]  # fmt: skip
        frames += [out.to_ndarray() for out in resampler.resample(None)]
        return np.concatenate(frames, axis=1), stream.rate


def make_audio(
    fmt: str,
    seconds: float,
    kind: AudioKind = "sine",
    frequency: float = 440.0,
    channels: int = 1,
    seed: int = 0,
) -> bytes:
    """An audio file of `seconds` in `fmt` (a key of `AUDIO_FORMATS`) at the format's usual rate."""
    rate = AUDIO_FORMATS[fmt].sample_rate
    samples = waveform(seconds, rate, kind, frequency=frequency, seed=seed)
    return encode_audio(samples, fmt, channels=channels)


def make_video_with_audio(seconds: float = 1.0) -> bytes:
    """An MP4 with a small video track first and an AAC tone second."""
    rate = 44_100
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        video = output.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = output.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(int(seconds * 10)):
            pixels = np.full((32, 32, 3), i * 20, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                output.mux(packet)
        for packet in video.encode(None):
            output.mux(packet)
        samples = waveform(seconds, rate)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in audio.encode(frame):
            output.mux(packet)
        for packet in audio.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def make_silent_video(seconds: float = 1.0) -> bytes:
    """An MP4 with only a video track (no audio stream)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        video = output.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        for i in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                output.mux(packet)
        for packet in video.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def make_picture(seed: int, fmt: str = "JPEG") -> bytes:
    """A distinct picture for search tests: a disc of one colour on another, sizes varying."""
    rng = np.random.default_rng(seed)
    background, disc = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
    image = Image.new("RGB", (80 + 4 * seed, 64), background)
    ImageDraw.Draw(image).ellipse([10 + seed, 5, 60 + seed, 55], fill=disc)
    return encode(image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def picture_folder(folder: Path, count: int) -> Path:
    """`folder` (created) holding `count` distinct JPEG pictures p00.jpg, p01.jpg, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"p{i:02d}.jpg").write_bytes(make_picture(i))
    return folder
