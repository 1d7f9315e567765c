"""The ImageBind encoder: media in, embeddings out (synchronous; see `core.worker` for async).

`Encoder.load(settings)` builds the model, loads its weights (from a local path or the cache,
downloading them once), and picks device and dtype. `prepare()` decodes and preprocesses one
input (raising a user-facing error for bad media); `forward()` embeds a batch of prepared inputs
of one modality. Both are meant to run in the encoder worker's thread, never on an event loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.config import MediaLimits, ModelSettings
from core.errors import ModelError
from core.imagebind.configs import get_config
from core.imagebind.loading import drop_pages, load_into, load_state_dict_file, modality_prefixes
from core.imagebind.model import (
    LOOKUP_TABLES,
    ImageBind,
    build_imagebind,
    place_model,
)
from core.imagebind.pretrained import CHECKPOINTS, resolve_checkpoint
from core.imagebind.tokenizer import ClipTokenizer
from core.imagebind.transforms import image_to_tensor, waveform_to_clips
from core.media.audio import decode_audio
from core.media.image import decode_image
from core.modalities import TOWERS, Modality

log = logging.getLogger(__name__)

TOWER_PREFIXES = modality_prefixes(TOWERS.values())

Prepared = str | torch.Tensor


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); else bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelError("[model] device = 'cuda' but no CUDA GPU is available: use 'auto' or 'cpu'")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device, model_name: str) -> torch.dtype:
    """`auto`: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32; `tiny` stays fp32 on CPU."""
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.float16
    if model_name != "tiny" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def load_model(
    settings: ModelSettings, *, progress: bool = True, dtype: torch.dtype | None = None
) -> ImageBind:
    """Build the named model with its weights (see the module docstring).

    `dtype`: cast the checkpoint's weights while loading them, one tensor at a time, so that
    bf16 or fp16 never holds the whole fp32 file in memory next to the cast copy.
    """
    if settings.name == "tiny" and settings.checkpoint_path is None:
        log.warning("model 'tiny': random weights for tests and demos, results mean nothing")
        return build_imagebind("tiny")
    spec = CHECKPOINTS.get(settings.name)
    if spec is None and settings.checkpoint_path is None:
        raise ModelError(f"no checkpoint is known for model {settings.name!r}: set [model] checkpoint_path")
    path = (
        settings.checkpoint_path
        if spec is None
        else resolve_checkpoint(
            spec,
            cache_dir=settings.cache_dir,
            local_path=settings.checkpoint_path,
            url=settings.checkpoint_url,
            progress=progress,
        )
    )
    # The token table stays as the file has it (see `place_model`).
    state_dict = load_state_dict_file(path, keep_prefixes=TOWER_PREFIXES, dtype=dtype, keep_dtype=LOOKUP_TABLES)
    return load_into(build_imagebind(settings.name, device="meta"), state_dict)


@dataclass
class Encoder:
    """A loaded model on its device, with the preprocessing of each modality."""

    model: ImageBind
    model_name: str
    device: torch.device
    dtype: torch.dtype
    limits: MediaLimits
    _paged_tables: list[torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Lookup tables left in the memory-mapped checkpoint are read like a file: the pages of
        # the rows a batch looked up are handed back after it (the page cache keeps them), so
        # the process never holds more of the table than one batch's rows.
        self.model, self._paged_tables = place_model(self.model, self.device, self.dtype)

    @classmethod
    def load(cls, settings: ModelSettings, limits: MediaLimits, *, progress: bool = True) -> Encoder:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device, settings.name)
        model = load_model(settings, progress=progress, dtype=dtype)
        log.info("model %s on %s as %s", settings.name, device, dtype)
        return cls(model, settings.name, device, dtype, limits)

    @property
    def dim(self) -> int:
        return get_config(self.model_name).out_dim

    @cached_property
    def tokenizer(self) -> ClipTokenizer:
        return ClipTokenizer()

    def prepare(self, modality: Modality, payload: str | bytes | Image.Image | np.ndarray) -> Prepared:
        """Decode and preprocess one input; bad media raises a `BadInputError`."""
        if modality == "text":
            if not isinstance(payload, str):
                raise TypeError("a text term needs a str payload")
            return payload
        if modality == "image":
            image = payload if isinstance(payload, Image.Image) else decode_image(payload, self.limits)
            return image_to_tensor(image)
        if modality == "audio":
            wave = payload if isinstance(payload, np.ndarray) else decode_audio(payload, self.limits)
            return waveform_to_clips(wave)
        raise ValueError(f"unknown modality {modality!r}")

    @torch.inference_mode()
    def forward(self, modality: Modality, batch: list[Prepared] | torch.Tensor) -> np.ndarray:
        """Embed prepared inputs of one modality: a float32 array [len(batch), dim].

        Image and audio inputs may also come already stacked into one tensor (the ingest's
        loader does that in its workers), which saves a copy.
        """
        if modality == "text":
            out = self.model.embed_text(self.tokenizer(batch).to(self.device))
            for table in self._paged_tables:
                drop_pages(table)
        else:
            stacked = batch if isinstance(batch, torch.Tensor) else torch.stack(batch)
            inputs = stacked.to(device=self.device, dtype=self.dtype)
            embed = self.model.embed_vision if modality == "image" else self.model.embed_audio
            out = embed(inputs)
        return out.float().cpu().numpy()

    def embed(self, modality: Modality, payloads: list) -> np.ndarray:
        """Prepare and forward in one call (ingest, benchmarks)."""
        return self.forward(modality, [self.prepare(modality, p) for p in payloads])
