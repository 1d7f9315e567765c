"""Fusing the embeddings of a query's terms into one search vector.

ImageBind's heads differ in scale (vision norm 1, text about 14.3, audio about 19.5), so a raw
sum lets text and audio drown an image. As in the ImageBind paper, each term's embedding is
L2-normalised, weighted, summed, and the sum normalised again; the store then ranks by cosine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import BadInputError

_EPS = 1e-6


def normalize(vector: np.ndarray) -> np.ndarray:
    """The unit vector along `vector` (float32); zero or non-finite vectors are an error."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < _EPS:
        raise BadInputError("the query's terms cancel each other out: change a weight or a term")
    return vector / norm


def fuse(embeddings: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Normalise each embedding, take the weighted sum, normalise the sum."""
    if len(embeddings) != len(weights) or not embeddings:
        raise ValueError("fuse() needs one weight per embedding, and at least one embedding")
    total = np.zeros_like(np.asarray(embeddings[0], dtype=np.float32))
    for embedding, weight in zip(embeddings, weights, strict=True):
        total += np.float32(weight) * normalize(embedding)
    return normalize(total)
