"""Tokenizer, image and audio preprocessing give what upstream ImageBind gives.

The oracle is the upstream code (`imagebind-unofficial`, through `tests/reference_imagebind`).
Its audio loader needs `torchaudio.load`, which does not work here, so its steps are replayed
from its own functions on a waveform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from core.errors import BadInputError
from core.imagebind.tokenizer import CONTEXT_LENGTH, ClipTokenizer, default_tokenizer
from core.imagebind.transforms import (
    AUDIO_MEAN,
    AUDIO_STD,
    clip_sample_ranges,
    image_to_tensor,
    waveform_to_clips,
)
from tests import media_factory as mf
from tests.reference_imagebind import reference_data_module

RATE = 16_000


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small tensors gain nothing from intra-op threads, and lose a lot when the CPUs are busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def upstream():
    return reference_data_module()


@pytest.fixture(scope="module")
def upstream_tokenizer(upstream):
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    return SimpleTokenizer(bpe_path=upstream.return_bpe_path())


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


# --------------------------------------------------------------------------- tokenizer

TEXTS = [
    "a dog",
    "A RED sports car at night!!!",
    "",
    "   \t\n ",
    "café naïve résumé Ångström",
    "東京の夜景 🌃🚗 ❤️",
    "&amp;lt;b&amp;gt; bold &quot;quoted&quot;",
    "Ã©tÃ© mojibake fixed by ftfy",
    "it's don't we'll I'd you're THEY'VE",
    "1234567890 3.14 v2.0 #hashtag @mention https://example.com/a?b=c",
    "supercalifragilisticexpialidocious" * 5,
    "a <|endoftext|> inside",
    "word " * 100,
    "x" * 500,
]


def test_token_ids_equal_upstream(tokenizer, upstream_tokenizer):
    ours = tokenizer(TEXTS)
    assert ours.shape == (len(TEXTS), CONTEXT_LENGTH)
    assert ours.dtype == torch.long
    for row, text in zip(ours, TEXTS):
        assert torch.equal(row, upstream_tokenizer(text)), text


def test_long_text_is_cut_to_75_tokens_and_still_ends_with_the_end_token(tokenizer):
    row = tokenizer(["word " * 100])[0]
    assert row[0] == tokenizer.start_id
    assert row[-1] == tokenizer.end_id
    assert (row != 0).all()
    # the text tower reads its output at the largest id, which must be the end token
    assert int(row.argmax()) == CONTEXT_LENGTH - 1
    assert len(tokenizer.encode("word " * 100)) == 100


def test_short_text_layout(tokenizer):
    row = tokenizer(["a dog"])[0].tolist()
    ids = tokenizer.encode("a dog")
    assert row[: len(ids) + 2] == [tokenizer.start_id, *ids, tokenizer.end_id]
    assert set(row[len(ids) + 2 :]) == {0}
    assert tokenizer([""])[0].tolist()[:3] == [tokenizer.start_id, tokenizer.end_id, 0]


def test_a_lone_string_is_one_text_and_the_default_is_shared(tokenizer):
    assert torch.equal(tokenizer("a dog"), tokenizer(["a dog"]))
    assert tokenizer.vocab_size == 49408
    assert default_tokenizer() is default_tokenizer()


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (224, 224), (641, 479), (90, 50)])
def test_image_tensor_equals_upstream(upstream, tmp_path: Path, size):
    image = mf.noise_image(*size, seed=sum(size))
    path = tmp_path / "image.png"
    image.save(path)
    expected = upstream.load_and_transform_vision_data([str(path)], "cpu")[0]
    ours = image_to_tensor(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert (ours - expected).abs().max().item() < 1e-6


def test_image_tensor_converts_other_modes():
    grey = Image.new("L", (240, 240), 128)
    assert torch.equal(image_to_tensor(grey), image_to_tensor(grey.convert("RGB")))


# --------------------------------------------------------------------------- audio


def upstream_clips(upstream, samples: np.ndarray) -> torch.Tensor:
    """Upstream `load_and_transform_audio_data` from the resampling step on, for one waveform."""
    waveform = torch.tensor(samples)[None]  # upstream mutates it; this is our own copy
    sampler = upstream.ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
    normalize = transforms.Normalize(mean=AUDIO_MEAN, std=AUDIO_STD)
    clips = []
    for start, end in upstream.get_clip_timepoints(sampler, waveform.size(1) / RATE):
        clip = waveform[:, int(start * RATE) : int(end * RATE)]
        clips.append(normalize(upstream.waveform2melspec(clip, RATE, 128, 204)))
    return torch.stack(clips)


def test_clip_ranges_equal_upstream_sampler(upstream):
    sampler = upstream.ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
    lengths = [1, 399, 16_000, 31_999, 32_000, 32_001, 48_000, 127_999, 128_000, 160_017]
    lengths += list(range(32_003, 400_000, 7_919))
    for n in lengths:
        expected = [
            (int(start * RATE), min(int(end * RATE), n))
            for start, end in upstream.get_clip_timepoints(sampler, n / RATE)
        ]
        assert clip_sample_ranges(n) == expected, n


def _test_audio(seconds: float, seed: int = 0) -> np.ndarray:
    tone = mf.waveform(seconds, RATE, "sine", frequency=330.0, amplitude=0.3)
    noise = mf.waveform(seconds, RATE, "noise", amplitude=0.3, seed=seed)
    return tone + noise + np.float32(0.02)  # a DC offset makes the mean subtraction matter


@pytest.mark.parametrize("seconds", [8.0, 9.37, 12.3456, 30.0])
def test_audio_clips_equal_upstream_from_8_seconds(upstream, seconds):
    samples = _test_audio(seconds)
    ours = waveform_to_clips(samples)
    assert ours.shape == (3, 1, 128, 204) and ours.dtype == torch.float32
    assert (ours - upstream_clips(upstream, samples)).abs().max().item() < 1e-5


def test_short_audio_clips_do_not_inherit_upstreams_in_place_bug(upstream):
    samples = _test_audio(3.0, seed=1)
    ours = waveform_to_clips(samples)
    normalize = transforms.Normalize(mean=AUDIO_MEAN, std=AUDIO_STD)
    for index, (start, end) in enumerate(clip_sample_ranges(samples.size)):
        alone = torch.tensor(samples[start:end])[None]  # a fresh copy for upstream to mutate
        expected = normalize(upstream.waveform2melspec(alone, RATE, 128, 204))
        assert (ours[index] - expected).abs().max().item() < 1e-5, index
    buggy = upstream_clips(upstream, samples)
    assert (ours[0] - buggy[0]).abs().max().item() < 1e-5
    assert (ours[1] - buggy[1]).abs().max().item() > 1e-3  # upstream's clip 2 differs


def test_audio_shorter_than_a_clip_is_padded(upstream):
    samples = _test_audio(1.0, seed=2)
    ours = waveform_to_clips(samples)
    assert ours.shape == (3, 1, 128, 204)
    assert torch.isfinite(ours).all()
    assert torch.equal(ours[0], ours[1]) and torch.equal(ours[1], ours[2])
    padding = ours[0, 0, :, 100:]  # 1 s gives 98 frames; the rest are zeros before normalising
    assert torch.allclose(padding, torch.full_like(padding, -AUDIO_MEAN / AUDIO_STD))
    assert (ours - upstream_clips(upstream, samples)).abs().max().item() < 1e-4


def test_audio_shorter_than_one_frame_and_empty_audio():
    assert waveform_to_clips(np.zeros(100, np.float32)).shape == (3, 1, 128, 204)
    with pytest.raises(BadInputError, match="empty"):
        waveform_to_clips(np.zeros(0, np.float32))


def test_audio_input_is_left_unchanged_and_shapes_are_accepted():
    samples = _test_audio(3.0, seed=3)
    before = samples.copy()
    as_tensor = torch.tensor(samples)
    from_numpy = waveform_to_clips(samples)
    from_tensor = waveform_to_clips(as_tensor)
    from_row = waveform_to_clips(as_tensor[None])
    readonly = samples.copy()
    readonly.flags.writeable = False
    from_readonly = waveform_to_clips(readonly)
    np.testing.assert_array_equal(samples, before)
    assert torch.equal(as_tensor, torch.tensor(before))
    for other in (from_tensor, from_row, from_readonly):
        assert torch.equal(from_numpy, other)
    with pytest.raises(ValueError, match="mono"):
        waveform_to_clips(np.zeros((2, 32_000), np.float32))
