"""Small files that once cost gigabytes or minutes to decode (issue 17, items 1, 2, 9 and 14).

The hostile files are made in code (tests/bad_inputs.py); each test checks the cost directly (the
samples a resampler produced, the bytes numpy allocated) or that the file is refused before the
costly step, so none of them depends on timing.
"""

from __future__ import annotations

import io
import struct
import tracemalloc

import av
import numpy as np
import pytest
from PIL import Image

from core.config import MediaLimits
from core.errors import MediaTooLargeError, UnsupportedMediaError
from core.media.audio import MIN_SAMPLE_RATE, decode_audio
from core.media.image import decode_image, jpeg_scans, max_jpeg_scans
from tests import media_factory as mf
from tests.bad_inputs import flac_frames_at, grey16_png, jpeg_scan_bomb
from tests.test_media import assert_user_message, dominant_frequency

LIMITS = MediaLimits()


# --------------------------------------------------------------------------- item 1: audio


@pytest.fixture
def resampled(monkeypatch) -> list[int]:
    """The number of samples of each frame FFmpeg's resampler gives, however it is called."""
    produced: list[int] = []
    real = av.AudioResampler

    class Counting:
        def __init__(self, *args, **kwargs):
            self._resampler = real(*args, **kwargs)

        def resample(self, frame):
            frames = self._resampler.resample(frame)
            produced.extend(out.samples for out in frames)
            return frames

    monkeypatch.setattr(av, "AudioResampler", Counting)
    return produced


def test_flac_frames_claiming_1_hz_are_refused_before_resampling(resampled):
    # 1,024 samples "at 1 Hz" are 17 minutes: 16 million samples at 16 kHz, from 16 bytes.
    data = flac_frames_at(1, frames=4, block=1024)
    with pytest.raises(UnsupportedMediaError, match="sample rate of 1 Hz; the minimum is 4000 Hz") as caught:
        decode_audio(data, LIMITS)
    assert_user_message(caught.value)
    assert sum(resampled) == 0


def test_a_frame_longer_than_what_is_left_is_refused_before_resampling(resampled):
    # Frames of 65,535 samples at 4 kHz: 16.4 s each, 4 of them; the limit is 20 s.
    data = flac_frames_at(MIN_SAMPLE_RATE, frames=4, block=65_535)
    with pytest.raises(MediaTooLargeError, match="longer than 20 s; the limit is 20 s") as caught:
        decode_audio(data, MediaLimits(max_audio_seconds=20))
    assert_user_message(caught.value)
    assert sum(resampled) <= 20 * 16_000  # the second frame was never resampled


def test_a_change_of_sample_rate_is_refused_with_a_clear_message():
    data = flac_frames_at((8_000, 8_000, 16_000), block=4096)
    with pytest.raises(UnsupportedMediaError, match="changes its sample rate from 8000 Hz to 16000 Hz") as caught:
        decode_audio(data, LIMITS)
    assert_user_message(caught.value)


def test_telephone_rate_clips_still_decode():
    samples = decode_audio(mf.encode_audio(mf.waveform(1.0, 8_000), "wav", sample_rate=8_000), LIMITS)
    assert samples.size == 16_000 and dominant_frequency(samples) == pytest.approx(440.0, abs=3.0)
    flac = decode_audio(flac_frames_at(8_000, frames=4, block=4096), LIMITS)
    assert flac.size == pytest.approx(4 * 4096 * 2, abs=64)


# --------------------------------------------------------------------------- item 14: channels


def many_channel_wav(channels: int, seconds: float = 1.0, rate: int = 16_000) -> bytes:
    """A 16-bit PCM WAV with the same 440 Hz tone (amplitude 0.5) on each of `channels`."""
    tone = (mf.waveform(seconds, rate) * 32767).astype("<i2")
    pcm = np.repeat(tone[:, None], channels, axis=1).tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("channels", [9, 64, 200])
def test_wavs_of_many_channels_are_mixed_down(channels):
    samples = decode_audio(many_channel_wav(channels), LIMITS)
    assert samples.dtype == np.float32 and samples.size == 16_000
    assert dominant_frequency(samples) == pytest.approx(440.0, abs=3.0)
    rms = float(np.sqrt(np.mean(samples[1000:-1000] ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


# --------------------------------------------------------------------------- item 2: JPEG scans


def test_a_progressive_jpeg_of_too_many_scans_is_refused_before_decoding():
    data = jpeg_scan_bomb(2000, 300)  # 306 scans; 2000x2000 may have 150
    assert jpeg_scans(data) == 306 and max_jpeg_scans(2000 * 2000) == 150
    with pytest.raises(MediaTooLargeError, match="more than 150 progressive scans; the limit for 2000×2000") as caught:
        decode_image(data, LIMITS)
    assert_user_message(caught.value)


def test_ordinary_progressive_jpegs_decode():
    ramp = np.linspace(0, 255, 640 * 480 * 3).astype(np.uint8).reshape(480, 640, 3)
    image = Image.fromarray(ramp)  # smooth: Pillow cannot write noise this size progressively
    for params in ({"quality": 90}, {"quality": 95, "subsampling": 0}, {"quality": 40}):
        data = mf.encode(image, "JPEG", progressive=True, **params)
        assert jpeg_scans(data) == 10
        assert decode_image(data, LIMITS).size == (640, 480)
    grey = mf.encode(image.convert("L"), "JPEG", progressive=True)
    assert jpeg_scans(grey) == 6 and decode_image(grey, LIMITS).size == (640, 480)
    assert jpeg_scans(mf.make_jpeg()) == 1
    # Ordinary progressive JPEGs (libjpeg's script: 10 scans) pass at the largest size allowed.
    assert max_jpeg_scans(LIMITS.max_image_pixels) >= 12


def test_scans_are_counted_in_the_picture_only():
    """A JPEG thumbnail inside a metadata segment, and a second picture after the end (MPO),
    are not counted."""
    thumbnail = jpeg_scan_bomb(64, 300)
    picture = mf.make_jpeg(32, 32)
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    data = picture[:2] + app1 + picture[2:] + thumbnail
    assert jpeg_scans(data) == 1
    assert decode_image(data, LIMITS).size == (32, 32)


# --------------------------------------------------------------------------- item 9: 16-bit greys


def float_tiff(width: int, height: int, value: float = 0.5) -> bytes:
    pixels = np.full((height, width), value, np.float32)
    return mf.encode(Image.fromarray(pixels), "TIFF", compression="tiff_deflate")


@pytest.mark.parametrize(
    ("data", "mode", "bytes_per_pixel"),
    [(grey16_png(3000, 3000), "I;16", 2), (float_tiff(3000, 3000), "F", 4)],
    ids=["png-16-bit", "tiff-float"],
)
def test_16_bit_and_float_greys_cost_little_more_than_their_pixels(data, mode, bytes_per_pixel):
    assert Image.open(io.BytesIO(data)).mode == mode
    pixels = 3000 * 3000
    tracemalloc.start()
    try:
        image = decode_image(data, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.getpixel((1500, 1500)) == (128, 128, 128)
    # Python's and numpy's allocations are traced (Pillow's pixels are not): the pixels as bytes
    # (twice while Pillow joins them), the 8-bit result and one block of float64; float64
    # copies of the whole picture took 8 bytes a pixel each.
    assert peak < (2 * bytes_per_pixel + 1) * pixels + 16_000_000, f"{peak / 1e6:.0f} MB"


def test_grey_levels_are_scaled_as_before():
    levels = np.array([[0, 1, 128, 32767, 32768, 65534, 65535]], np.uint16)
    image = decode_image(mf.make_png_with_mode(Image.fromarray(levels)), LIMITS)
    assert [image.getpixel((x, 0))[0] for x in range(7)] == [0, 0, 0, 127, 128, 255, 255]
    floats = np.array([[0.0, 0.5, 1.0, np.nan, -1.0, 2.0 / 255]], np.float32)
    image = decode_image(mf.encode(Image.fromarray(floats), "TIFF"), LIMITS)
    assert [image.getpixel((x, 0))[0] for x in range(6)] == [0, 128, 255, 0, 0, 2]


def test_a_jpeg_of_too_many_segments_is_refused():
    picture = mf.make_jpeg(32, 32)
    sof = picture.find(b"\xff\xc0")
    sos = picture.find(b"\xff\xda")
    assert 0 < sof < sos
    data = picture[:sos] + b"\xff\xfe\x00\x02" * 100_000 + picture[sos:]  # empty comments
    with pytest.raises(MediaTooLargeError, match="more than 10,000 segments") as caught:
        decode_image(data, LIMITS)
    assert_user_message(caught.value)
