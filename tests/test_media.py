"""Decoding untrusted images and audio: formats, modes, limits and bad input."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import core.media.audio as audio_module
from core.config import MediaLimits
from core.errors import (
    BadInputError,
    MediaTooLargeError,
    MediaTooShortError,
    UnsupportedMediaError,
)
from core.media.audio import decode_audio
from core.media.image import (
    decode_image,
    encode_jpeg,
    image_size,
    jpeg_without_metadata,
)
from tests import media_factory as mf

LIMITS = MediaLimits()
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def assert_user_message(error: BadInputError) -> None:
    """Short, one line, and says what to do."""
    message = str(error)
    assert "\n" not in message and len(message) < 160
    assert "send" in message


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


# --------------------------------------------------------------------------- images: formats


@pytest.mark.parametrize(
    "data",
    [
        mf.make_png(40, 30, color=RED),
        mf.make_jpeg(40, 30, color=RED),
        mf.make_gif(40, 30, color=RED),
        mf.make_webp(40, 30, color=RED),
        mf.make_cmyk_jpeg(40, 30),  # pure red ink
        mf.encode(mf.solid_image(40, 30, RED), "BMP"),
        mf.encode(mf.solid_image(40, 30, RED), "TIFF", compression="tiff_lzw"),
    ],
    ids=["png", "jpeg", "gif", "webp", "cmyk-jpeg", "bmp", "tiff"],
)
def test_common_formats_decode_to_rgb(data):
    image = decode_image(data, LIMITS)
    assert type(image) is Image.Image  # a plain loaded image, not tied to the input bytes
    assert image.mode == "RGB" and image.size == (40, 30)
    assert close_to(image.getpixel((20, 15)), RED)


def test_noise_png_is_lossless():
    image = mf.noise_image(17, 9, seed=5)
    decoded = decode_image(mf.make_png(17, 9, seed=5), LIMITS)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_gives_its_first_frame(fmt):
    frames = [mf.solid_image(16, 16, c) for c in (RED, BLUE, WHITE)]
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = mf.encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    image = decode_image(data, LIMITS)
    assert image.mode == "RGB" and close_to(image.getpixel((8, 8)), RED)
    assert decode_image(mf.make_animated_gif([BLUE, RED]), LIMITS).getpixel((1, 1)) == BLUE


def test_exif_orientation_is_applied():
    picture = mf.two_tone_image(60, 40, left=RED, right=BLUE)
    plain = decode_image(mf.encode(picture, "JPEG", quality=95), LIMITS)
    assert plain.size == (60, 40) and close_to(plain.getpixel((5, 20)), RED, 20)
    # orientation 6: the camera was turned; display rotated 90 degrees clockwise
    turned = mf.encode(picture, "JPEG", quality=95, exif=mf.exif_orientation(6))
    rotated = decode_image(turned, LIMITS)
    assert rotated.size == (40, 60)
    assert close_to(rotated.getpixel((20, 5)), RED, 20)  # left half is now on top
    assert close_to(rotated.getpixel((20, 55)), BLUE, 20)


# --------------------------------------------------------------------------- images: modes


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    image = decode_image(mf.make_png_with_mode(rgba), LIMITS)
    assert image.getpixel((0, 0)) == RED
    assert close_to(image.getpixel((1, 0)), (127, 127, 127), 2)
    assert image.getpixel((3, 3)) == WHITE

    grey_alpha = decode_image(mf.make_png_with_mode(Image.new("LA", (4, 4), (0, 0))), LIMITS)
    assert grey_alpha.getpixel((2, 2)) == WHITE

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert decode_image(mf.make_png_with_mode(palette), LIMITS).getpixel((2, 2)) == WHITE


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("1", (4, 4), 1), WHITE),
        (Image.new("P", (4, 4), 1), None),  # palette without transparency: its colour
        (Image.fromarray(np.full((4, 4), 32896, np.uint16)), (128, 128, 128)),  # I;16
        (Image.fromarray(np.full((4, 4), 65535, np.uint16)), WHITE),
    ],
    ids=["L", "1", "P", "I;16-mid", "I;16-max"],
)
def test_other_modes_become_rgb(image, expected):
    if expected is None:
        image.putpalette([0, 0, 0, *BLUE] + [0, 0, 0] * 254)
        expected = BLUE
    decoded = decode_image(mf.make_png_with_mode(image), LIMITS)
    assert decoded.mode == "RGB" and decoded.getpixel((1, 1)) == expected


# --------------------------------------------------------------------------- images: bad input


@pytest.mark.parametrize(
    "data",
    [
        mf.truncated(mf.make_jpeg(120, 90, seed=1), 0.5),
        mf.truncated(mf.make_jpeg(120, 90, seed=1), 0.98),
        mf.truncated(mf.make_png(120, 90, seed=1), 0.5),
    ],
    ids=["jpeg-half", "jpeg-almost-whole", "png-half"],
)
def test_truncated_images_are_rejected(data):
    with pytest.raises(UnsupportedMediaError, match="damaged") as caught:
        decode_image(data, LIMITS)
    assert_user_message(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        mf.random_bytes(),
        b"just some text, not a picture\n" * 20,
        b"",
        mf.make_audio("wav", 0.2),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # Pillow would run Ghostscript
    ],
    ids=["random-bytes", "text", "empty", "wav", "eps"],
)
def test_non_images_are_rejected(data):
    with pytest.raises(UnsupportedMediaError) as caught:
        decode_image(data, LIMITS)
    assert_user_message(caught.value)


def test_header_claiming_a_huge_picture_is_rejected_before_decoding():
    # The file holds one pixel: had it been decoded, it would fail as damaged. "400 MP" can only
    # come from the header, read before any pixel is.
    bomb = mf.make_png_claiming_size(20_000, 20_000)
    assert len(bomb) < 100
    for limits in (LIMITS, MediaLimits(max_image_pixels=10**10)):  # Pillow's own guard too
        with pytest.raises(MediaTooLargeError, match="400 MP") as caught:
            decode_image(bomb, limits)
        assert_user_message(caught.value)


def test_pixel_limit_uses_the_header_size():
    data = mf.make_png(300, 200, color=RED)
    assert image_size(data) == (300, 200)
    expected = r"300×200 pixels \(0\.06 MP\); the limit is 0\.05 MP"
    with pytest.raises(MediaTooLargeError, match=expected):
        decode_image(data, MediaLimits(max_image_pixels=50_000))
    assert decode_image(data, MediaLimits(max_image_pixels=60_000)).size == (300, 200)


def test_file_size_is_checked_before_anything_else():
    limits = MediaLimits(max_file_bytes=1_000)
    with pytest.raises(MediaTooLargeError, match="5 kB; the limit is 1 kB") as caught:
        decode_image(mf.random_bytes(5_000), limits)  # not even an image: size comes first
    assert_user_message(caught.value)


def test_encode_jpeg_round_trip():
    rgba = Image.new("RGBA", (30, 20), (0, 0, 255, 255))
    data = encode_jpeg(rgba, quality=85)
    assert data[:3] == b"\xff\xd8\xff"
    image = decode_image(data, LIMITS)
    assert image.size == (30, 20) and close_to(image.getpixel((10, 10)), BLUE, 10)
    with pytest.raises(ValueError):
        encode_jpeg(rgba, quality=0)


# --------------------------------------------------------------------------- audio: formats


def dominant_frequency(samples: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("fmt", sorted(mf.AUDIO_FORMATS))
def test_audio_formats_decode_to_mono_16k_float(fmt):
    samples = decode_audio(mf.make_audio(fmt, 1.5, frequency=440.0), LIMITS)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.size / 16_000 == pytest.approx(1.5, abs=0.05)
    assert dominant_frequency(samples) == pytest.approx(440.0, abs=3.0)
    rms = float(np.sqrt(np.mean(samples[1000:-1000] ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


@pytest.mark.parametrize("fmt", ["ogg", "m4a"])
def test_stereo_noise_and_silence(fmt):
    stereo = decode_audio(mf.make_audio(fmt, 1.0, channels=2), LIMITS)
    assert stereo.ndim == 1 and dominant_frequency(stereo) == pytest.approx(440.0, abs=3.0)
    noise = decode_audio(mf.make_audio(fmt, 1.0, kind="noise"), LIMITS)
    assert noise.std() > 0.05
    silence = decode_audio(mf.make_audio(fmt, 1.0, kind="silence"), LIMITS)
    assert np.abs(silence).max() < 1e-3


def test_other_sample_rate():
    samples = decode_audio(mf.make_audio("wav", 1.0), LIMITS, sample_rate=8_000)
    assert samples.size == 8_000
    assert dominant_frequency(samples, 8_000) == pytest.approx(440.0, abs=3.0)


def test_audio_track_of_a_video_is_used():
    samples = decode_audio(mf.make_video_with_audio(1.0), LIMITS)
    assert samples.size / 16_000 == pytest.approx(1.0, abs=0.05)


def test_mp3_files_glued_together_decode_in_full():
    glued = mf.make_audio("mp3", 1.0) + mf.make_audio("mp3", 2.0)
    assert decode_audio(glued, LIMITS).size / 16_000 == pytest.approx(3.0, abs=0.1)


# --------------------------------------------------------------------------- audio: mixing, resampling


def test_stereo_is_mixed_as_the_mean_of_its_channels():
    rate = 44_100
    tone = mf.waveform(2.0, rate, frequency=440.0, amplitude=0.5)
    other = mf.waveform(2.0, rate, frequency=1_000.0, amplitude=0.5)
    mono = decode_audio(mf.encode_audio(tone, "wav", sample_rate=rate), LIMITS)
    alike = decode_audio(mf.encode_audio(tone, "wav", sample_rate=rate, channels=2), LIMITS)
    np.testing.assert_allclose(alike, mono, atol=1e-6)  # the same level, not 3 dB louder
    one_side = decode_audio(mf.encode_channels(np.stack([tone, 0 * tone]), "wav", rate), LIMITS)
    np.testing.assert_allclose(one_side, mono / 2, atol=1e-6)
    both = decode_audio(mf.encode_channels(np.stack([tone, other]), "wav", rate), LIMITS)
    other_alone = decode_audio(mf.encode_audio(other, "wav", sample_rate=rate), LIMITS)
    np.testing.assert_allclose(both, (mono + other_alone) / 2, atol=1e-5)


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 44_100, 48_000, 96_000])
def test_resampling_is_torchaudios_on_the_native_samples(rate):
    """The samples `torchaudio.functional.resample` (as upstream ImageBind calls it) gives."""
    torch = pytest.importorskip("torch")
    from torchaudio.functional import resample

    samples = mf.waveform(3.3, rate, "noise", amplitude=0.6, seed=rate)
    data = mf.encode_audio(samples, "flac", sample_rate=rate)
    native, native_rate = mf.decode_native(data)
    expected = resample(torch.from_numpy(native[0]), native_rate, 16_000).numpy()
    decoded = decode_audio(data, LIMITS)
    assert decoded.shape == expected.shape
    assert np.abs(decoded - expected).max() <= 1e-5


def test_resampling_in_pieces_equals_one_call_and_holds_one_piece(monkeypatch):
    torch = pytest.importorskip("torch")
    from torchaudio.functional import resample

    monkeypatch.setattr(audio_module, "_CHUNK_SAMPLES", 1 << 15)  # several pieces in 7 s
    rate = 44_100
    samples = mf.waveform(7.0, rate, "noise", amplitude=0.6, seed=5)
    resampler = audio_module._SincResampler(rate, 16_000)
    sizes = np.random.default_rng(0).integers(1, 5_000, size=samples.size)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    pieces, held = [], []
    for start, end in itertools.pairwise(bounds):
        if start >= samples.size:
            break
        pieces += resampler.push(samples[start:end])
        held.append(resampler._buffer.size + resampler._pending_size)
    assert len(pieces) >= 8  # the pieces came while pushing, not all at the end
    pieces += resampler.finish()
    expected = resample(torch.from_numpy(samples), rate, 16_000).numpy()
    got = np.concatenate(pieces)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6
    assert max(held) <= audio_module._CHUNK_SAMPLES + 2_000 + 5_000


def test_odd_rates_are_resampled_without_a_huge_filter(monkeypatch):
    """44,056 Hz to 16 kHz reduces to 5,507 / 2,000: torchaudio would build an 11-million
    coefficient filter. FFmpeg's resampler takes such clips; channels are still averaged."""
    import torchaudio.functional

    def refuse(*args, **kwargs):
        raise AssertionError("torchaudio's resampler was called")

    monkeypatch.setattr(torchaudio.functional, "resample", refuse)
    rate = 44_056
    tone = mf.waveform(2.0, rate, frequency=440.0, amplitude=0.5)
    mono = decode_audio(mf.encode_audio(tone, "wav", sample_rate=rate), LIMITS)
    stereo = decode_audio(mf.encode_audio(tone, "wav", sample_rate=rate, channels=2), LIMITS)
    assert mono.size / 16_000 == pytest.approx(2.0, abs=0.01)
    assert dominant_frequency(mono) == pytest.approx(440.0, abs=3.0)
    np.testing.assert_allclose(stereo, mono, atol=1e-6)


# --------------------------------------------------------------------------- audio: bad input


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file and not a voice message\n" * 20,
        mf.random_bytes(),
        b"",
        mf.make_png(32, 32, seed=3),  # FFmpeg could read it as a video: not allowed here
        mf.make_jpeg(32, 32, seed=3),
    ],
    ids=["text", "random-bytes", "empty", "png", "jpeg"],
)
def test_non_audio_is_rejected(data):
    with pytest.raises(UnsupportedMediaError) as caught:
        decode_audio(data, LIMITS)
    assert_user_message(caught.value)


def test_video_without_sound_is_not_an_audio_file():
    with pytest.raises(UnsupportedMediaError, match="not an audio file") as caught:
        decode_audio(mf.make_silent_video(), LIMITS)
    assert_user_message(caught.value)


def test_files_that_point_to_other_files_are_not_followed(tmp_path: Path):
    target = tmp_path / "secret.wav"
    target.write_bytes(mf.make_audio("wav", 1.0))
    playlists = [
        f"ffconcat version 1.0\nfile '{target}'\n".encode(),
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n"
        + f"file://{target}\n#EXT-X-ENDLIST\n".encode(),
    ]
    for data in playlists:
        with pytest.raises(UnsupportedMediaError):
            decode_audio(data, LIMITS)


@pytest.mark.parametrize("fmt", ["wav", "ogg"])
def test_too_short_clip(fmt):
    with pytest.raises(MediaTooShortError, match=r"0\.3 s long; the minimum is 0\.5 s") as caught:
        decode_audio(mf.make_audio(fmt, 0.3), MediaLimits(min_audio_seconds=0.5))
    assert_user_message(caught.value)


@pytest.mark.parametrize("fmt", ["wav", "ogg", "m4a"])
def test_too_long_clip_from_its_declared_duration(fmt):
    with pytest.raises(MediaTooLargeError, match="12 s long; the limit is 5 s") as caught:
        decode_audio(mf.make_audio(fmt, 12.0), MediaLimits(max_audio_seconds=5))
    assert_user_message(caught.value)


def test_too_long_clip_without_a_declared_duration_stops_decoding_early(monkeypatch):
    pulled, converted = [], []
    real_chunks, real_mono = audio_module._resampled_chunks, audio_module._native_mono

    def counting_chunks(*args, **kwargs):
        for chunk in real_chunks(*args, **kwargs):
            pulled.append(chunk.size)
            yield chunk

    def counting_mono(frame):
        converted.append(frame.samples)
        return real_mono(frame)

    monkeypatch.setattr(audio_module, "_declared_seconds", lambda container, stream: None)
    monkeypatch.setattr(audio_module, "_resampled_chunks", counting_chunks)
    monkeypatch.setattr(audio_module, "_native_mono", counting_mono)
    with pytest.raises(MediaTooLargeError, match="longer than 5 s; the limit is 5 s") as caught:
        decode_audio(mf.make_audio("ogg", 12.0), MediaLimits(max_audio_seconds=5))
    assert_user_message(caught.value)
    # Stopped at the frame that would pass the limit, before converting or resampling it (the
    # resampler gives its output in pieces of a few seconds, so less of it was pulled).
    assert 4.9 * 48_000 < sum(converted) <= 5 * 48_000
    assert sum(pulled) <= 5 * 16_000


def test_audio_file_over_the_byte_limit():
    data = mf.make_audio("wav", 1.0)
    with pytest.raises(MediaTooLargeError, match="32 kB; the limit is 10 kB") as caught:
        decode_audio(data, MediaLimits(max_file_bytes=10_000))
    assert_user_message(caught.value)


def test_decoded_audio_is_a_fresh_writable_array():
    samples = decode_audio(mf.make_audio("flac", 1.0), LIMITS)
    assert samples.flags.writeable and samples.flags.c_contiguous


# --------------------------------------------------------------------------- stored copies: no metadata


def photo_with_gps(orientation: int = 1, width: int = 60, height: int = 40) -> bytes:
    """A two-tone JPEG with EXIF (camera, GPS position, orientation), an XMP packet and a comment."""
    exif = mf.exif_orientation(orientation)
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 22.0, 7.5), 3: "E", 4: (4.0, 53.0, 1.2)})
    data = mf.encode(mf.two_tone_image(width, height, RED, BLUE), "JPEG", quality=95, exif=exif,
                     comment=b"taken at home")  # fmt: skip
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>52.3687N 4.8836E</x:xmpmeta>"
    return data[:2] + b"\xff\xe1" + len(xmp + b"..").to_bytes(2, "big") + xmp + data[2:]


@pytest.mark.parametrize("orientation", [1, 6])
def test_stored_copies_keep_no_exif_and_are_the_right_way_round(orientation):
    from ingest.loader import stored_jpeg

    data = photo_with_gps(orientation)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)
    stored = stored_jpeg(data, decode_image(data, LIMITS))
    for private in (b"Exif", b"PhoneMaker", b"xmpmeta", b"taken at home"):
        assert private not in stored
    copy = Image.open(io.BytesIO(stored))
    assert not copy.getexif() and "exif" not in copy.info
    # Orientation 6: turned a quarter clockwise, the left (red) half on top.
    width, height = copy.size
    assert (width, height) == ((60, 40) if orientation == 1 else (40, 60))
    top_or_left = copy.getpixel((5, 5) if orientation == 6 else (5, 20))
    assert close_to(top_or_left, RED, tolerance=40)
    if orientation == 1:  # nothing to turn: the original pixels, losslessly
        assert decode_image(stored, LIMITS).tobytes() == decode_image(data, LIMITS).tobytes()


def test_metadata_stripping_keeps_what_shapes_the_pixels():
    cmyk = mf.make_cmyk_jpeg()  # Adobe's APP14 says how to read its colours
    assert close_to(decode_image(jpeg_without_metadata(cmyk), LIMITS).getpixel((5, 5)), RED, tolerance=10)
    icc = mf.encode(mf.solid_image(16, 16), "JPEG", icc_profile=b"\x00" * 200)
    assert Image.open(io.BytesIO(jpeg_without_metadata(icc))).info.get("icc_profile") == b"\x00" * 200
    progressive = mf.encode(mf.two_tone_image(64, 48), "JPEG", progressive=True, exif=mf.exif_orientation(1))
    stripped = jpeg_without_metadata(progressive)
    assert b"Exif" not in stripped
    assert decode_image(stripped, LIMITS).tobytes() == decode_image(progressive, LIMITS).tobytes()
    assert jpeg_without_metadata(mf.make_jpeg(orientation=3)) is None  # must be turned: re-encoded
