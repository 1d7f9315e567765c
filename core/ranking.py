"""Ranking the hits of a search for a page: fold near-duplicates, then cut off by score.

Folding near-duplicates: a page shows different images, not five crops of one. Many images of a
collection like lexica share a prompt and look alike. Ranked hits are walked best first; a hit
whose embedding is within `cosine` (`[search] collapse_cosine`) of an earlier kept hit (a group
leader) is folded into the most similar leader and counted there ("+N similar"), else it leads
a new group.

The score cut-off: which cosine counts as a match depends on what is compared. ImageBind's
cosines live in different ranges per modality pair: a text and an image that match score far
lower than two images that match (see docs/scores.md). A query made of several terms gets the
average of its positive terms' cut-offs, weighted by their weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.config import ScoreCutoffs
from core.query import Term
from core.store.base import Hit


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


def query_cutoff(terms: Sequence[Term], cutoffs: ScoreCutoffs | None, floor: float = -1.0) -> float:
    """The lowest score shown for results of `terms`; `cutoffs=None` applies only `floor`."""
    positive = [t for t in terms if t.weight > 0]
    if cutoffs is None or not positive:
        return floor
    total = sum(t.weight for t in positive)
    mixed = sum(t.weight * getattr(cutoffs, t.modality) for t in positive) / total
    return max(floor, mixed)
