"""Property-based tests of what parses and decodes untrusted input: the query text (with its
`filter:` words) and the image and audio decoders, on arbitrary bytes and on damaged valid files.

The property is the same everywhere: either a usable value, or a `SearchAllError` whose message
is written for the user; never another exception (which the bots would report as a bug).
tests/test_query.py already covers `parse_text_terms` on arbitrary text.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.config import MediaLimits
from core.errors import BadInputError, EmptyQueryError, QuerySyntaxError
from core.media.audio import decode_audio
from core.media.image import decode_image
from core.query import MAX_ABS_WEIGHT, parse_query_text
from tests import media_factory as mf

# Pillow warns about the broken TIFF/EXIF tags it skips; skipping them is the point here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Small limits keep each example cheap: a damaged header cannot make a decoder work for long.
LIMITS = MediaLimits(max_file_bytes=200_000, max_image_pixels=2_000_000, max_audio_seconds=5.0)

# --------------------------------------------------------------------------- the query text

# Pieces of the syntax, so that examples hit operators, weights, quotes and filters often.
TOKENS = ["cat", "a red car", " ", "  ", "+", "-", "*", "0.5*", "2*", "11*", "1e3*", ".*", '"', "filter:",
          "-filter:", 'filter:"', "FILTER:x", "sci-fi", "\n", "\t", "é", "🙂", "\x00", "0", "9.99"]
query_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
)


@FEW
@given(query_texts, st.integers(min_value=1, max_value=400), st.integers(min_value=1, max_value=20))
def test_query_text_parses_into_weighted_terms_or_raises_a_query_error(text, max_chars, max_terms):
    try:
        parsed = parse_query_text(text, max_chars=max_chars, max_terms=max_terms)
    except (QuerySyntaxError, EmptyQueryError) as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        return
    assert len(text) <= max_chars and len(parsed.terms) <= max_terms
    for term in parsed.terms:
        assert term.modality == "text" and term.payload and term.payload == term.payload.strip()
        assert math.isfinite(term.weight) and abs(term.weight) <= MAX_ABS_WEIGHT
    assert all(word and word == word.strip() for word in parsed.include + parsed.exclude)


# --------------------------------------------------------------------------- damaged files


def damaged(valid: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of `valid`, then overwritten, cut short, or with bytes inserted, at drawn places."""

    @st.composite
    def build(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            action = draw(st.sampled_from(["overwrite", "truncate", "insert", "zero-run"]))
            if action == "overwrite":
                data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
            elif action == "truncate":
                del data[max(at, 1) :]
            elif action == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            else:
                data[at : at + 64] = bytes(len(data[at : at + 64]))
        return bytes(data)

    return build()


VALID_IMAGES = [
    mf.make_png(24, 16, seed=1),
    mf.make_jpeg(24, 16, seed=2),
    mf.make_gif(24, 16),
    mf.make_animated_gif([(0, 0, 255), (255, 0, 0)], 16, 16),
    mf.make_webp(24, 16, seed=3),
    mf.encode(mf.noise_image(24, 16, seed=4), "BMP"),
    mf.encode(mf.noise_image(24, 16, seed=5), "TIFF", compression="tiff_lzw"),
    mf.make_png_with_mode(mf.noise_image(12, 12, seed=6, mode="RGBA")),
    mf.make_jpeg(24, 16, seed=7, orientation=6),
]
VALID_AUDIO = [mf.make_audio(fmt, 0.6) for fmt in ("wav", "ogg", "mp3", "m4a", "flac", "webm")]


def image_or_user_error(data: bytes) -> None:
    try:
        image = decode_image(data, LIMITS)
    except BadInputError as exc:
        assert str(exc).strip()
        return
    assert type(image) is Image.Image and image.mode == "RGB"
    assert image.width * image.height <= LIMITS.max_image_pixels


def audio_or_user_error(data: bytes) -> None:
    try:
        samples = decode_audio(data, LIMITS)
    except BadInputError as exc:
        assert str(exc).strip()
        return
    assert samples.ndim == 1 and samples.dtype.name == "float32"
    assert LIMITS.min_audio_seconds * 16_000 <= samples.size <= (LIMITS.max_audio_seconds + 1) * 16_000


@FEW
@given(st.binary(max_size=4096))
def test_any_bytes_decode_as_an_image_or_raise_a_user_error(data):
    image_or_user_error(data)


@FEW
@given(damaged(VALID_IMAGES))
def test_damaged_images_decode_or_raise_a_user_error(data):
    image_or_user_error(data)


@settings(FEW, max_examples=40)
@given(st.binary(max_size=4096))
def test_any_bytes_decode_as_audio_or_raise_a_user_error(data):
    audio_or_user_error(data)


@settings(FEW, max_examples=60)
@given(damaged(VALID_AUDIO))
def test_damaged_audio_decodes_or_raises_a_user_error(data):
    audio_or_user_error(data)
