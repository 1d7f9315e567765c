"""Our ImageBind encoder against the upstream implementation (`imagebind-unofficial`).

- tiny parity: the reference `ImageBindModel` at tiny sizes, its weights perturbed so that no
  LayerNorm or bias is trivial, loaded strictly into ours; text, vision and audio outputs agree.
- huge parity: on the meta device, our `state_dict()` keys and shapes equal the reference
  `imagebind_huge` restricted to the text, vision and audio towers (so the official checkpoint
  loads strictly); parameter counts are pinned.
- our tiny random weights are the same in two builds and in another process.
- audio preprocessing: a 44.1 or 48 kHz file decoded by `core.media.audio` and cut into clips
  by `core.imagebind.transforms` gives upstream's `load_and_transform_audio_data` clips (fed the
  same decoded samples) to 1e-4.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional
from torch import nn

from core.config import MediaLimits
from core.imagebind.configs import MODALITIES, MODEL_CONFIGS
from core.imagebind.model import ImageBind, build_imagebind
from core.imagebind.transforms import waveform_to_clips
from core.media.audio import decode_audio
from tests import media_factory as mf
from tests.reference_imagebind import reference_data_module, reference_model_module

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = MODEL_CONFIGS["tiny"]
TOLERANCE = 1e-5
END_OF_TEXT = TINY.text.end_of_text_token
START_OF_TEXT = TINY.text.start_of_text_token


def our_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of an upstream state dict that belong to the text, vision and audio towers."""
    return {key: value for key, value in state_dict.items() if key.split(".")[1] in MODALITIES}


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over every key, dtype, shape and value of the model's state dict."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def reference_tiny() -> nn.Module:
    """Upstream's ImageBindModel at our tiny sizes (the three towers we do not use: small)."""
    spare = {"embed_dim": 32, "num_blocks": 1, "num_heads": 2}
    return reference_model_module().ImageBindModel(
        out_embed_dim=TINY.out_dim,
        vision_embed_dim=TINY.vision.embed_dim,
        vision_num_blocks=TINY.vision.num_blocks,
        vision_num_heads=TINY.vision.num_heads,
        text_embed_dim=TINY.text.embed_dim,
        text_num_blocks=TINY.text.num_blocks,
        text_num_heads=TINY.text.num_heads,
        audio_embed_dim=TINY.audio.embed_dim,
        audio_num_blocks=TINY.audio.num_blocks,
        audio_num_heads=TINY.audio.num_heads,
        **{
            f"{tower}_{field}": value
            for tower in ("depth", "thermal", "imu")
            for field, value in spare.items()
        },
    )


@torch.no_grad()
def perturb_(model: nn.Module, seed: int) -> None:
    """Adds N(0, 0.05) noise to every parameter, so unit norms and zero biases are exercised."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def make_inputs(batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token rows shaped like the tokenizer's ([SOT, words..., EOT, 0...]), images, filter banks."""
    generator = torch.Generator().manual_seed(seed)
    length = TINY.text.context_length
    tokens = torch.zeros(batch, length, dtype=torch.long)
    random_ends = torch.randint(2, length - 1, (batch,), generator=generator).tolist()
    end_positions = [1, length - 1, *random_ends][:batch]  # shortest, longest, in between
    for row, end in enumerate(end_positions):
        tokens[row, 0] = START_OF_TEXT
        tokens[row, 1:end] = torch.randint(1, START_OF_TEXT, (end - 1,), generator=generator)
        tokens[row, end] = END_OF_TEXT
    side = TINY.vision.image_size
    images = torch.randn(batch, 3, side, side, generator=generator)
    audio = TINY.audio
    mel_shape = (batch, audio.clips_per_input, 1, audio.num_mel_bins, audio.target_length)
    mels = torch.randn(mel_shape, generator=generator)
    return {"text": tokens, "vision": images, "audio": mels}


def embed_all(model: ImageBind, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "text": model.embed_text(inputs["text"]),
            "vision": model.embed_vision(inputs["vision"]),
            "audio": model.embed_audio(inputs["audio"]),
        }


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    model = reference_tiny()
    perturb_(model, seed=7)
    return model.eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return make_inputs()


@pytest.fixture(scope="module")
def reference_outputs(
    reference: nn.Module, inputs: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return reference(inputs)


def test_tiny_sizes_are_the_documented_ones() -> None:
    for tower in (TINY.text, TINY.vision, TINY.audio):
        assert (tower.embed_dim, tower.num_blocks, tower.num_heads) == (64, 2, 2)
    assert TINY.out_dim == 64


@pytest.mark.parametrize("modality", MODALITIES)
def test_tiny_matches_reference(
    modality: str,
    reference: nn.Module,
    inputs: dict[str, torch.Tensor],
    reference_outputs: dict[str, torch.Tensor],
) -> None:
    ours = build_imagebind("tiny")
    ours.load_state_dict(our_keys(reference.state_dict()), strict=True)
    expected = reference_outputs[modality]
    got = embed_all(ours, inputs)[modality]
    assert got.shape == expected.shape == (3, TINY.out_dim)
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_short_texts_match_reference(reference: nn.Module) -> None:
    """Ours runs only up to the batch's last end-of-text (attention is causal); upstream all 77."""
    generator = torch.Generator().manual_seed(3)
    tokens = torch.zeros(4, TINY.text.context_length, dtype=torch.long)
    for row, end in enumerate((1, 5, 9, 11)):  # the batch runs 12 positions
        tokens[row, 0] = START_OF_TEXT
        tokens[row, 1:end] = torch.randint(1, START_OF_TEXT, (end - 1,), generator=generator)
        tokens[row, end] = END_OF_TEXT
    ours = build_imagebind("tiny")
    ours.load_state_dict(our_keys(reference.state_dict()), strict=True)
    with torch.no_grad():
        expected = reference({"text": tokens})["text"]
        got = ours.embed_text(tokens)
        alone = torch.cat([ours.embed_text(tokens[i : i + 1]) for i in range(4)])
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert (alone - expected).abs().max().item() <= TOLERANCE


def test_meta_build_loads_with_assign_and_matches_reference(
    reference: nn.Module,
    inputs: dict[str, torch.Tensor],
    reference_outputs: dict[str, torch.Tensor],
) -> None:
    """The checkpoint path: build on meta, then assign the (copied) tensors strictly."""
    ours = build_imagebind("tiny", device="meta")
    state_dict = {key: value.clone() for key, value in our_keys(reference.state_dict()).items()}
    ours.load_state_dict(state_dict, strict=True, assign=True)
    assert not any(t.is_meta for t in (*ours.parameters(), *ours.buffers()))
    got = embed_all(ours, inputs)
    for modality in MODALITIES:
        assert (got[modality] - reference_outputs[modality]).abs().max().item() <= TOLERANCE


def test_output_scales_follow_upstream(
    reference: nn.Module, reference_outputs: dict[str, torch.Tensor]
) -> None:
    log_scale = reference.modality_postprocessors["text"][1].log_logit_scale
    norms = {modality: out.norm(dim=-1) for modality, out in reference_outputs.items()}
    torch.testing.assert_close(norms["vision"], torch.ones(3))
    torch.testing.assert_close(norms["text"], log_scale.exp().expand(3))
    # Each clip has norm 20; their mean is shorter unless the clips agree.
    assert ((norms["audio"] > 0) & (norms["audio"] <= 20 + 1e-4)).all()


def test_text_logit_scale_is_clipped_at_100(
    reference: nn.Module, inputs: dict[str, torch.Tensor]
) -> None:
    state_dict = our_keys(reference.state_dict())
    state_dict["modality_postprocessors.text.1.log_logit_scale"] = torch.tensor(math.log(1000.0))
    ours = build_imagebind("tiny")
    ours.load_state_dict(state_dict, strict=True)
    upstream = reference_tiny().eval()
    upstream.load_state_dict(state_dict, strict=False)
    with torch.no_grad():
        got = ours.embed_text(inputs["text"])
        expected = upstream({"text": inputs["text"]})["text"]
    torch.testing.assert_close(got.norm(dim=-1), torch.full((3,), 100.0))
    assert (got - expected).abs().max().item() <= TOLERANCE


def test_tiny_random_weights_are_deterministic_and_sane(inputs: dict[str, torch.Tensor]) -> None:
    first, second = build_imagebind("tiny"), build_imagebind("tiny")
    assert state_dict_digest(first) == state_dict_digest(second)
    assert not first.training
    outputs, again = embed_all(first, inputs), embed_all(second, inputs)
    for modality in MODALITIES:
        out = outputs[modality]
        assert torch.equal(out, again[modality])
        assert torch.isfinite(out).all()
        assert (out[0] - out[1]).abs().max() > 1e-3, f"{modality}: rows do not depend on input"
    assert build_imagebind("tiny", seed=1).state_dict()["modality_heads.text.proj.1.weight"].ne(
        first.state_dict()["modality_heads.text.proj.1.weight"]
    ).any()


def test_tiny_random_weights_are_identical_in_another_process() -> None:
    code = (
        "from core.imagebind.model import build_imagebind\n"
        "from tests.test_imagebind_parity import state_dict_digest\n"
        "print(state_dict_digest(build_imagebind('tiny')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == state_dict_digest(build_imagebind("tiny"))


def test_huge_keys_and_shapes_match_reference_checkpoint_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Upstream computes drop-path rates with `torch.linspace(...).item()`, which fails on the
    # meta device: compute that one on the CPU.
    linspace = torch.linspace
    monkeypatch.setattr(
        torch, "linspace", lambda *args, **kwargs: linspace(*args, **kwargs, device="cpu")
    )
    with torch.device("meta"):
        upstream = reference_model_module().imagebind_huge(pretrained=False)
    monkeypatch.undo()
    ours = build_imagebind("imagebind_huge", device="meta")
    expected = {
        key: (tuple(t.shape), t.dtype) for key, t in our_keys(upstream.state_dict()).items()
    }
    got = {key: (tuple(t.shape), t.dtype) for key, t in ours.state_dict().items()}
    assert got == expected
    assert all(t.is_meta for t in (*ours.parameters(), *ours.buffers()))

    upstream_counts = dict.fromkeys(MODALITIES, 0)
    for name, parameter in upstream.named_parameters():
        if name.split(".")[1] in MODALITIES:
            upstream_counts[name.split(".")[1]] += parameter.numel()
    counts = ours.parameter_counts()
    assert counts == upstream_counts
    # Upstream imagebind_huge: vision 632.8M, text 354.0M, audio 86.2M; 1,073M for the three towers.
    assert counts == {"vision": 632_829_440, "text": 354_032_641, "audio": 86_235_648}
    assert sum(counts.values()) == 1_073_097_729


@pytest.mark.parametrize(
    ("method", "shape", "dtype"),
    [
        ("embed_text", (2, 76), torch.long),
        ("embed_text", (2, 77), torch.float32),
        ("embed_vision", (2, 3, 224, 223), torch.float32),
        ("embed_vision", (3, 224, 224), torch.float32),
        ("embed_audio", (2, 1, 128, 204), torch.float32),
        ("embed_audio", (2, 3, 1, 128, 200), torch.float32),
    ],
)
def test_wrong_input_shapes_are_rejected(
    method: str, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    model = build_imagebind("tiny")
    with pytest.raises(ValueError):
        getattr(model, method)(torch.zeros(shape, dtype=dtype))


def test_bfloat16_weights_stay_close_to_float32(inputs: dict[str, torch.Tensor]) -> None:
    model = build_imagebind("tiny")
    full = embed_all(model, inputs)
    half = embed_all(model.to(torch.bfloat16), inputs)
    for modality in MODALITIES:
        cosine = nn.functional.cosine_similarity(full[modality], half[modality].float(), dim=-1)
        assert (cosine > 0.99).all(), (modality, cosine)


# --------------------------------------------------------------------------- audio preprocessing


def upstream_audio_clips(
    monkeypatch: pytest.MonkeyPatch, waveform: np.ndarray, rate: int
) -> torch.Tensor:
    """Upstream's `load_and_transform_audio_data` on `waveform` (`[channels, n]` at `rate`):
    its `torchaudio.load` is given the decoded samples, everything after it is upstream's own
    (`torchaudio.functional.resample` to 16 kHz, clip sampler, filterbank, normalisation)."""
    data = reference_data_module()
    monkeypatch.setattr(
        data.torchaudio, "load", lambda path: (torch.tensor(waveform, dtype=torch.float32), rate)
    )
    clips = data.load_and_transform_audio_data(["decoded.wav"], device="cpu")
    monkeypatch.undo()
    return clips[0]


def parity_clip(rate: int, seconds: float = 25.3) -> np.ndarray:
    """Noise (all of the band, where resamplers differ most), a tone and a DC offset; longer than
    one piece of our resampler (`core.media.audio._CHUNK_SAMPLES`), so the seams are compared."""
    noise = mf.waveform(seconds, rate, "noise", amplitude=0.6, seed=rate)
    tone = mf.waveform(seconds, rate, "sine", frequency=330.0, amplitude=0.3)
    return np.clip(noise + tone + np.float32(0.02), -1.0, 1.0)


@pytest.mark.parametrize(
    ("fmt", "rate", "channels"),
    [
        ("wav", 44_100, 1),
        ("flac", 44_100, 1),
        ("wav", 48_000, 1),
        ("flac", 48_000, 1),
        ("wav", 44_100, 2),
    ],
    ids=["wav-44.1k", "flac-44.1k", "wav-48k", "flac-48k", "wav-44.1k-stereo-alike"],
)
def test_decoded_audio_clips_match_upstreams_loader(
    monkeypatch: pytest.MonkeyPatch, fmt: str, rate: int, channels: int
) -> None:
    """A file decoded and cut into clips as we do gives upstream's filterbank clips to 1e-4.

    Upstream resamples with `torchaudio.functional.resample` (FFmpeg's resampler differed by up
    to 0.15); for a stereo clip whose channels are alike, the mean of the channels is upstream's
    left channel (FFmpeg's mono mix-down, (L + R) / sqrt(2), was 3 dB louder).
    """
    data = mf.encode_audio(parity_clip(rate), fmt, sample_rate=rate, channels=channels)
    native, native_rate = mf.decode_native(data)
    assert native.shape[0] == channels and native_rate == rate
    expected_clips = upstream_audio_clips(monkeypatch, native, rate)
    expected_waveform = torchaudio.functional.resample(torch.from_numpy(native[0]), rate, 16_000)

    waveform = decode_audio(data, MediaLimits())
    assert waveform.shape == expected_waveform.shape
    assert np.abs(waveform - expected_waveform.numpy()).max() <= 1e-5
    clips = waveform_to_clips(waveform)
    assert clips.shape == expected_clips.shape == (3, 1, 128, 204)
    assert (clips - expected_clips).abs().max().item() <= 1e-4
