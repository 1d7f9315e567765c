"""ImageBind's text, vision and audio encoders, with the official checkpoint's names.

`ImageBind` holds only the three towers this project uses. Its `state_dict()` keys and shapes
are those of the official `imagebind_huge.pth` restricted to the `vision`, `text` and `audio`
entries of `modality_preprocessors`, `modality_trunks`, `modality_heads` and
`modality_postprocessors`, so the checkpoint (filtered to those keys) loads strictly.

Outputs equal upstream's `ImageBindModel.forward` for each modality:
- vision: L2-normalised (norm 1). An image is repeated into a 2-frame video first.
- text: L2-normalised, times exp(learned log scale) clipped at 100 (about 14.3 at init).
  Pooled at the position of the largest token id, which is the end-of-text token.
- audio: each clip L2-normalised and times a fixed 20, then averaged over the clips (so the
  norm is a little under 20).
Because these norms differ, embeddings of different modalities are fused only after each is
L2-normalised (`core.fusion`).

`build_imagebind(name, device=...)`: on the `meta` device the model allocates nothing and is
meant to be filled with `load_state_dict(state_dict, assign=True, strict=True)`; on a real
device it gets deterministic random weights (the same in every process), which is what the
`tiny` model is for: tests and demos, embeddings without meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from core.imagebind.configs import (
    MODALITIES,
    AudioTowerConfig,
    ImageBindConfig,
    TextTowerConfig,
    VisionTowerConfig,
    get_config,
)
from core.imagebind.layers import (
    LAYER_NORM_EPS,
    EndOfTextHead,
    L2Normalize,
    LogitScale,
    PatchStem,
    PatchTokenizer,
    RepeatImageAsVideo,
    SelectToken,
    TextTokenEmbedding,
    Transformer,
)
from core.imagebind.loading import is_file_backed

RANDOM_WEIGHTS_SEED = 0
"""Seed of the random weights given to a model built on a real device."""

LOOKUP_TABLES = ("modality_preprocessors.text.token_embedding.weight",)
"""Parameters read a row at a time, which `place_model` leaves in a memory-mapped checkpoint."""


def _class_token_head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim, eps=LAYER_NORM_EPS), SelectToken(0), nn.Linear(dim, out_dim, bias=False)
    )


def _vision_tokenizer(config: VisionTowerConfig) -> PatchTokenizer:
    conv = nn.Conv3d(
        config.in_channels,
        config.embed_dim,
        kernel_size=config.patch_size,
        stride=config.patch_size,
        bias=False,
    )
    stem = PatchStem(nn.Sequential(RepeatImageAsVideo(config.num_frames), conv))
    return PatchTokenizer(stem, config.num_patches, config.embed_dim)


def _audio_tokenizer(config: AudioTowerConfig) -> PatchTokenizer:
    conv = nn.Conv2d(
        1, config.embed_dim, kernel_size=config.kernel_size, stride=config.stride, bias=False
    )
    # This LayerNorm keeps torch's default epsilon (1e-5), as upstream.
    stem = PatchStem(conv, norm_layer=nn.LayerNorm(config.embed_dim))
    return PatchTokenizer(stem, config.num_patches, config.embed_dim)


def _trunk(
    config: TextTowerConfig | VisionTowerConfig | AudioTowerConfig,
    *,
    norm_input: bool,
    add_bias_kv: bool,
) -> Transformer:
    return Transformer(
        config.embed_dim,
        config.num_blocks,
        config.num_heads,
        config.mlp_ratio,
        norm_input=norm_input,
        add_bias_kv=add_bias_kv,
    )


def _check_shape(what: str, tensor: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """Raises ValueError unless `tensor` has `expected` shape (None: any size)."""
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(
        want is not None and got != want for got, want in zip(shape, expected, strict=True)
    ):
        wanted = ", ".join("B" if want is None else str(want) for want in expected)
        raise ValueError(f"{what} must have shape [{wanted}], got {list(shape)}")


class ImageBind(nn.Module):
    """ImageBind's text, vision and audio encoders into one embedding space."""

    def __init__(self, config: ImageBindConfig) -> None:
        super().__init__()
        self.config = config
        text, vision, audio = config.text, config.vision, config.audio
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": _vision_tokenizer(vision),
                "text": TextTokenEmbedding(text.vocab_size, text.context_length, text.embed_dim),
                "audio": _audio_tokenizer(audio),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": _trunk(vision, norm_input=True, add_bias_kv=False),
                "text": _trunk(text, norm_input=False, add_bias_kv=False),
                "audio": _trunk(audio, norm_input=False, add_bias_kv=True),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {
                "vision": _class_token_head(vision.embed_dim, config.out_dim),
                "text": EndOfTextHead(text.embed_dim, config.out_dim),
                "audio": _class_token_head(audio.embed_dim, config.out_dim),
            }
        )
        self.modality_postprocessors = nn.ModuleDict(
            {
                "vision": L2Normalize(),
                "text": nn.Sequential(
                    L2Normalize(),
                    LogitScale(
                        text.logit_scale_init, learnable=True, max_scale=text.max_logit_scale
                    ),
                ),
                "audio": nn.Sequential(
                    L2Normalize(), LogitScale(audio.logit_scale, learnable=False)
                ),
            }
        )

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, 77] (end-of-text is the largest id of each row) -> [B, out_dim]."""
        _check_shape("token ids", token_ids, (None, self.config.text.context_length))
        if token_ids.is_floating_point() or token_ids.is_complex():
            raise ValueError(f"token ids must be integers, got {token_ids.dtype}")
        embedding = cast(TextTokenEmbedding, self.modality_preprocessors["text"])
        # Attention is causal and the head reads each row's end-of-text token, so the positions
        # after the batch's last end-of-text change nothing: they are dropped (same numbers; a
        # short query runs ~16 positions instead of 77, and batching pays again).
        end = token_ids.argmax(dim=-1)
        length = int(end.max()) + 1
        tokens = embedding(token_ids)[:, :length]
        mask = embedding.mask[:length, :length].to(tokens.dtype)
        hidden = self.modality_trunks["text"](tokens, attn_mask=mask)
        pooled = self.modality_heads["text"](hidden, end)
        return self.modality_postprocessors["text"](pooled)

    def embed_vision(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, 224, 224] -> unit-norm embeddings [B, out_dim].

        Inputs are cast to the model's dtype.
        """
        vision = self.config.vision
        _check_shape(
            "images", images, (None, vision.in_channels, vision.image_size, vision.image_size)
        )
        tokens = self.modality_preprocessors["vision"](images.to(self._dtype))
        hidden = self.modality_trunks["vision"](tokens)
        return self.modality_postprocessors["vision"](self.modality_heads["vision"](hidden))

    def embed_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """Filter banks [B, clips, 1, 128, 204] -> [B, out_dim], the mean over the clips.

        Each clip is embedded on its own (normalised, times 20), then the clips are averaged.
        Inputs are cast to the model's dtype.
        """
        audio = self.config.audio
        _check_shape("mels", mels, (None, None, 1, audio.num_mel_bins, audio.target_length))
        batch, clips = mels.shape[:2]
        tokens = self.modality_preprocessors["audio"](mels.flatten(0, 1).to(self._dtype))
        hidden = self.modality_trunks["audio"](tokens)
        per_clip = self.modality_postprocessors["audio"](self.modality_heads["audio"](hidden))
        return per_clip.reshape(batch, clips, -1).mean(dim=1)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Embeds each modality given, like upstream's forward: {"text": ids, ...}."""
        embedders = {
            "text": self.embed_text,
            "vision": self.embed_vision,
            "audio": self.embed_audio,
        }
        unknown = set(inputs) - set(embedders)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; known: {sorted(embedders)}")
        return {modality: embedders[modality](value) for modality, value in inputs.items()}

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters per modality (buffers excluded); works on the meta device."""
        counts = dict.fromkeys(MODALITIES, 0)
        for name, parameter in self.named_parameters():
            counts[name.split(".")[1]] += parameter.numel()
        return counts

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.modality_trunks.parameters()).dtype


@torch.no_grad()
def init_random_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Fills every parameter and buffer of `model` from `generator` (upstream-like schemes).

    Walks the modules in registration order, so the same generator state gives the same
    weights. Upstream's scheme: Xavier-uniform Linears with zero biases, unit LayerNorms, torch's
    default for convolutions, N(0, 0.02) token embeddings.
    """
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            nn.init.xavier_uniform_(module.in_proj_weight, generator=generator)
            nn.init.zeros_(module.in_proj_bias)
            if module.bias_k is not None and module.bias_v is not None:
                nn.init.xavier_normal_(module.bias_k, generator=generator)
                nn.init.xavier_normal_(module.bias_v, generator=generator)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_uniform_(module.weight, a=5**0.5, generator=generator)
        elif isinstance(module, (PatchTokenizer, TextTokenEmbedding, LogitScale)):
            module.reset_parameters(generator)


def build_imagebind(
    name: str,
    *,
    device: str | torch.device = "cpu",
    seed: int = RANDOM_WEIGHTS_SEED,
) -> ImageBind:
    """The ImageBind called `name` (see `MODEL_CONFIGS`), in eval mode.

    - `device="meta"`: nothing is allocated; load a checkpoint with
      `model.load_state_dict(state_dict, strict=True, assign=True)`.
    - a real device: deterministic random weights from `seed`, the same in every process and on
      every device (drawn on the CPU, then moved). For `tiny` in tests and demos, or to time
      `imagebind_huge` without its checkpoint; such embeddings mean nothing.
    """
    config = get_config(name)
    with torch.device("meta"):
        model = ImageBind(config)
    device = torch.device(device)
    if device.type != "meta":
        model = model.to_empty(device="cpu")
        init_random_weights(model, torch.Generator(device="cpu").manual_seed(seed))
        model = model.to(device)
    return model.eval()


def place_model(
    model: ImageBind, device: torch.device, dtype: torch.dtype
) -> tuple[ImageBind, list[torch.Tensor]]:
    """`model.to(device, dtype)` in eval mode, except memory-mapped `LOOKUP_TABLES` on the CPU;
    returns the model and the tables it left in the file.

    The text tower's token table (49,408 x 1,024) is a lookup: a query reads one row per token.
    Loaded from the checkpoint with `mmap` (`is_file_backed`), it is left there, in the file's
    dtype, and only the rows looked up are read in, instead of a 97 MiB bf16 copy held for good
    (benchmarks/README.md, startup and memory); the rows are cast to the model's dtype. A table
    in memory (random weights), or on another device, is moved and cast like the rest.
    """
    kept: dict[tuple[nn.Module, str], nn.Parameter] = {}
    if device.type == "cpu":
        for name in LOOKUP_TABLES:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if is_file_backed(model.get_parameter(name)):
                kept[(module, attr)] = module._parameters.pop(attr)
    try:
        model = model.to(device=device, dtype=dtype)
    finally:
        for (module, attr), parameter in kept.items():
            module.register_parameter(attr, parameter)
    return model.eval(), list(kept.values())
