"""Near-duplicate folding: a page shows different images, not five crops of one.

Many images of a collection like lexica share a prompt and look alike. Ranked hits are walked
best first; a hit whose embedding is within `cosine` of an earlier kept hit (a group leader) is
folded into the most similar leader and counted there ("+N similar"), else it leads a new group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.store import Hit


@dataclass(frozen=True)
class Group:
    hit: Hit  # the best-ranked member, shown
    folded: int  # how many lower-ranked near-duplicates were folded into it


def fold_near_duplicates(hits: Sequence[Hit], vectors: np.ndarray, cosine: float) -> list[Group]:
    """Group `hits` (best first; `vectors[i]` is hit i's embedding) at threshold `cosine`.

    `cosine >= 1` turns folding off (every hit is its own group, even exact duplicates).
    """
    if cosine >= 1.0:
        return [Group(h, 0) for h in hits]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    leaders: list[int] = []
    folded: list[int] = []
    for i in range(len(hits)):
        if leaders:
            sims = unit[leaders] @ unit[i]
            j = int(np.argmax(sims))
            if sims[j] >= cosine:
                folded[j] += 1
                continue
        leaders.append(i)
        folded.append(0)
    return [Group(hits[i], n) for i, n in zip(leaders, folded, strict=True)]
