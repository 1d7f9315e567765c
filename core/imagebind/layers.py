"""Building blocks of the ImageBind towers.

Attribute names follow the official checkpoint (`imagebind_huge.pth`), so that a tower's
`state_dict()` keys are the checkpoint's: for example `rgbt_stem`, `pos_embedding_helper`,
`pre_transformer_layer`, `norm_1`, and `nn.MultiheadAttention`'s own `in_proj_weight`. Modules
without parameters sit where the checkpoint has them, because they shift `nn.Sequential`
indices (the Linear of a head is `.2.`, after the parameter-free `SelectToken`).

Unlike upstream, the trunks run batch-first (B, L, D) instead of transposing to (L, B, D); the
attention weights and the result are the same.

Modules with parameters that torch does not know how to initialise have a
`reset_parameters(generator)` method; buffers (the causal mask, fixed scales) are filled there
too, so a model materialised with `to_empty()` can be made whole again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Upstream uses this epsilon for every LayerNorm except the one after the audio patch stem.
LAYER_NORM_EPS = 1e-6


class MultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` that draws no initial weights on the meta device.

    Drawing normal samples on the meta device costs about 2 s the first time in a process
    (torch imports its Python reference kernels); the weights there come from a checkpoint.
    """

    def _reset_parameters(self) -> None:
        if not self.in_proj_weight.is_meta:
            super()._reset_parameters()


class Embedding(nn.Embedding):
    """`nn.Embedding` that draws no initial weights on the meta device (see above)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class FeedForward(nn.Module):
    """The MLP of a transformer block: Linear, exact GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm_1(x)), then x + mlp(norm_2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, add_bias_kv: bool) -> None:
        super().__init__()
        self.attn = MultiheadAttention(
            dim, num_heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True
        )
        self.norm_1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(dim, dim * mlp_ratio)
        self.norm_2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.norm_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.norm_2(x))


class Transformer(nn.Module):
    """A tower's trunk: an optional LayerNorm on the input tokens, then the blocks."""

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        num_heads: int,
        mlp_ratio: int,
        *,
        norm_input: bool,
        add_bias_kv: bool,
    ) -> None:
        super().__init__()
        # Upstream's Sequential also holds a (parameter-free) layout change after the norm.
        self.pre_transformer_layer = nn.Sequential(
            nn.LayerNorm(dim, eps=LAYER_NORM_EPS) if norm_input else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(
                TransformerBlock(dim, num_heads, mlp_ratio, add_bias_kv)
                for _ in range(num_blocks)
            )
        )

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre_transformer_layer(tokens)
        for block in self.blocks:
            x = block(x, attn_mask)
        return x


class RepeatImageAsVideo(nn.Module):
    """(B, C, H, W) -> (B, C, T, H, W) by repeating the image `num_frames` times."""

    def __init__(self, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.unsqueeze(2).expand(-1, -1, self.num_frames, -1, -1)


class PatchStem(nn.Module):
    """Cuts the input into patch embeddings (B, num_patches, D) with `proj`, then `norm_layer`."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.proj(x).flatten(2).transpose(1, 2)
        return patches if self.norm_layer is None else self.norm_layer(patches)


class PositionEmbedding(nn.Module):
    """A learned position embedding per token (the class token included)."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))


class PatchTokenizer(nn.Module):
    """Image or spectrogram -> tokens: patch embeddings after a class token, plus positions."""

    def __init__(self, stem: PatchStem, num_patches: int, dim: int) -> None:
        super().__init__()
        self.rgbt_stem = stem  # upstream's name, for the audio tower as well
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embedding_helper = PositionEmbedding(num_patches + 1, dim)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """OpenCLIP-style init, as upstream: N(0, 1) scaled by dim ** -0.5."""
        scale = self.cls_token.shape[-1] ** -0.5
        nn.init.normal_(self.cls_token, std=scale, generator=generator)
        nn.init.normal_(self.pos_embedding_helper.pos_embed, std=scale, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.rgbt_stem(x)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat((cls, patches), dim=1) + self.pos_embedding_helper.pos_embed


class TextTokenEmbedding(nn.Module):
    """Token ids (B, L) -> token plus position embeddings; holds the causal attention mask."""

    def __init__(self, vocab_size: int, context_length: int, dim: int) -> None:
        super().__init__()
        self.token_embedding = Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, dim))
        # Additive mask: -inf above the diagonal. Persistent, because the checkpoint has it.
        self.register_buffer("mask", torch.empty(context_length, context_length))
        self._fill_causal_mask()

    @torch.no_grad()
    def _fill_causal_mask(self) -> None:
        if not self.mask.is_meta:  # `triu_` on meta imports torch._dynamo (slow)
            self.mask.fill_(float("-inf")).triu_(1)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02, generator=generator)
        nn.init.normal_(self.pos_embed, std=0.01, generator=generator)
        self._fill_causal_mask()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # The token table may be kept in another dtype than the model (see `place_model`).
        return self.token_embedding(token_ids).to(self.pos_embed.dtype) + self.pos_embed


class SelectToken(nn.Module):
    """(B, L, D) -> (B, D): the token at `index` (the class token for vision and audio)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class EndOfTextHead(nn.Module):
    """Text head: the hidden state at each sequence's end-of-text position, then `proj`."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(dim, eps=LAYER_NORM_EPS), nn.Linear(dim, out_dim, bias=False)
        )

    def forward(self, x: torch.Tensor, end_positions: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[0], device=x.device)
        return self.proj(x[rows, end_positions])


class L2Normalize(nn.Module):
    """Scales each embedding (last dimension) to unit L2 norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=-1)


class LogitScale(nn.Module):
    """Multiplies by exp(log_logit_scale), clipped at `max_scale`.

    Learnable (a parameter, text) or fixed (a buffer, audio); both are checkpoint keys.
    """

    def __init__(self, init: float, *, learnable: bool, max_scale: float = 100.0) -> None:
        super().__init__()
        self.init = init
        self.max_scale = max_scale
        log_scale = torch.empty(())
        if learnable:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.log_logit_scale.fill_(math.log(self.init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.log_logit_scale.exp(), max=self.max_scale) * x

    def extra_repr(self) -> str:
        learnable = isinstance(self.log_logit_scale, nn.Parameter)
        return f"init={self.init}, learnable={learnable}, max_scale={self.max_scale}"
