"""Sizes of the ImageBind towers this project runs (text, vision, audio), and named models.

Each tower is described by a frozen dataclass holding its transformer sizes and the input
geometry the model was trained with. The preprocessing constants that belong to the model (the
tokenizer's context length and vocabulary, the image size and CLIP normalisation, the audio
sample rate, clip layout and filter-bank normalisation) live here too, so the tokenizer and the
media transforms read them from the same place as the model.

`MODEL_CONFIGS` names the sizes:
- `"imagebind_huge"`: the official checkpoint (`imagebind_huge.pth`), restricted to our towers.
- `"tiny"`: the same architecture and input shapes with embedding dims of 64, two blocks and two
  heads per tower. For tests and demos only: it is built with deterministic random weights and
  its embeddings mean nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from core.modalities import TOWERS

# The towers this project runs, by their checkpoint names ("vision", not "image").
MODALITIES: tuple[str, ...] = tuple(TOWERS.values())

# CLIP's image normalisation (ImageBind's vision tower is initialised from OpenCLIP ViT-H).
CLIP_IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TowerConfig:
    """Width and depth of one tower's transformer trunk (every tower has these)."""

    embed_dim: int
    num_blocks: int
    num_heads: int
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )


@dataclass(frozen=True)
class TextTowerConfig(TowerConfig):
    """The text tower: CLIP BPE tokens, causal transformer, pooled at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    # The tokenizer's special tokens. The model pools at the position of the largest token id,
    # which is the end-of-text token (the last id of the vocabulary).
    start_of_text_token: int = 49406
    end_of_text_token: int = 49407
    # The output is normalised, then scaled by exp(log scale) clipped at `max_logit_scale`;
    # the log scale is learned (a parameter of the checkpoint), initialised at log(1 / 0.07).
    logit_scale_init: float = 1 / 0.07
    max_logit_scale: float = 100.0


@dataclass(frozen=True)
class VisionTowerConfig(TowerConfig):
    """The vision tower: an image is repeated into a 2-frame video, then cut into 3-D patches."""

    image_size: int = 224
    in_channels: int = 3
    num_frames: int = 2
    patch_size: tuple[int, int, int] = (2, 14, 14)  # (frames, height, width); stride equals it
    mean: tuple[float, float, float] = CLIP_IMAGE_MEAN
    std: tuple[float, float, float] = CLIP_IMAGE_STD

    @property
    def patch_grid(self) -> tuple[int, int, int]:
        """Number of patches along (time, height, width)."""
        frames, height, width = self.patch_size
        return (
            self.num_frames // frames,
            self.image_size // height,
            self.image_size // width,
        )

    @property
    def num_patches(self) -> int:
        return math.prod(self.patch_grid)


@dataclass(frozen=True)
class AudioTowerConfig(TowerConfig):
    """The audio tower: Kaldi filter banks of 2 s clips, overlapping 2-D patches."""

    num_mel_bins: int = 128
    target_length: int = 204  # filter-bank frames per clip (10 ms hop)
    kernel_size: int = 16
    stride: int = 10
    # Preprocessing: mono waveform at `sample_rate`, `clips_per_input` clips of `clip_seconds`
    # spread over the recording, filter banks normalised with `fbank_mean` / `fbank_std`.
    sample_rate: int = 16_000
    clip_seconds: float = 2.0
    clips_per_input: int = 3
    fbank_mean: float = -4.268
    fbank_std: float = 9.138
    # The output is normalised, then multiplied by this fixed scale (a buffer, not learned).
    logit_scale: float = 20.0

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Number of patches along (mel bins, frames) for the valid strided convolution."""
        return (
            (self.num_mel_bins - self.kernel_size) // self.stride + 1,
            (self.target_length - self.kernel_size) // self.stride + 1,
        )

    @property
    def num_patches(self) -> int:
        return math.prod(self.patch_grid)


@dataclass(frozen=True)
class ImageBindConfig:
    """A named ImageBind model: the three towers and the shared embedding size."""

    name: str
    out_dim: int
    text: TextTowerConfig
    vision: VisionTowerConfig
    audio: AudioTowerConfig


def _tiny() -> ImageBindConfig:
    size = {"embed_dim": 64, "num_blocks": 2, "num_heads": 2}
    return ImageBindConfig(
        name="tiny",
        out_dim=64,
        text=TextTowerConfig(**size),
        vision=VisionTowerConfig(**size),
        audio=AudioTowerConfig(**size),
    )


def _huge() -> ImageBindConfig:
    return ImageBindConfig(
        name="imagebind_huge",
        out_dim=1024,
        text=TextTowerConfig(embed_dim=1024, num_blocks=24, num_heads=16),
        vision=VisionTowerConfig(embed_dim=1280, num_blocks=32, num_heads=16),
        audio=AudioTowerConfig(embed_dim=768, num_blocks=12, num_heads=12),
    )


MODEL_CONFIGS: Mapping[str, ImageBindConfig] = MappingProxyType(
    {config.name: config for config in (_huge(), _tiny())}
)


def get_config(name: str) -> ImageBindConfig:
    """The configuration called `name`; a `KeyError` lists the known names."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(MODEL_CONFIGS))
        raise KeyError(f"unknown ImageBind model {name!r}; known: {known}") from None
