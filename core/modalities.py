"""The one list of modalities: what a query term or an ingested file can be, and the ImageBind
tower that embeds each.

Users, adapters and the encoder say "image"; ImageBind's checkpoint calls that tower "vision"
(`modality_trunks.vision.…`). Text and audio have the same name on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

Modality = Literal["text", "image", "audio"]
MODALITIES: tuple[Modality, ...] = ("text", "image", "audio")

# The tower of each modality, by its checkpoint name.
TOWERS: Mapping[Modality, str] = MappingProxyType({"text": "text", "image": "vision", "audio": "audio"})
