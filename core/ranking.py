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

    Hits are walked one by one (a hit may lead a group that a later hit folds into), but the
    similarities are computed a block of hits at a time: the block against the leaders known
    before it in one matrix product, and the block against itself for the leaders it adds. A
    decision whose margin is within the rounding error of the matrix product (a best similarity
    within `tol` of `cosine`, or two leaders within `tol` of each other) is recomputed exactly
    as one hit against the leaders, so the groups and counts never depend on how the products
    were blocked.
    """
    if cosine >= 1.0:
        return [Group(h, 0) for h in hits]
    n = len(hits)
    if n == 0:
        return []
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1, norms)
    # |a.b| <= 1 for unit vectors, so two ways of summing d products differ by at most d*eps.
    # A NaN (from an infinite or NaN embedding) makes every decision go the exact way.
    tol = 4.0 * unit.shape[1] * float(np.finfo(unit.dtype).eps) if np.isfinite(unit).all() else np.inf
    leaders: list[int] = []
    folded: list[int] = []
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        block = unit[lo:hi]
        # Against the leaders of earlier blocks: the best, its index, the runner-up, per row.
        if leaders:
            sims = block @ unit[leaders].T
            arg_old = np.argmax(sims, axis=1)
            best_old = sims[np.arange(hi - lo), arg_old]
            second_old = (
                np.partition(sims, -2, axis=1)[:, -2] if len(leaders) > 1 else np.full(hi - lo, -np.inf)
            )
        else:
            arg_old = np.zeros(hi - lo, dtype=np.intp)
            best_old = second_old = np.full(hi - lo, -np.inf)
        inner = block @ block.T  # against the leaders this block adds
        known = len(leaders)
        fresh: list[int] = []  # positions in the block of the leaders it adds
        for b in range(hi - lo):
            i = lo + b
            j, best, runner_up = int(arg_old[b]), float(best_old[b]), float(second_old[b])
            if fresh:
                row = inner[b, fresh]
                f = int(np.argmax(row))
                new_best = float(row[f])
                if len(fresh) > 1:
                    new_second = float(np.partition(row, -2)[-2])
                else:
                    new_second = -np.inf
                if not known or new_best > best:
                    j, best, runner_up = known + f, new_best, max(best, new_second)
                else:
                    runner_up = max(runner_up, new_best)
            if not leaders:
                fold = False  # the first hit leads
            elif best < cosine - tol:
                fold = False
            elif best > cosine + tol and best - runner_up > tol:
                fold = True
            else:
                # Too close to call from the blocked products: the old per-hit product, compared
                # the old way (in the embeddings' precision).
                exact = unit[leaders] @ unit[i]
                j = int(np.argmax(exact))
                fold = bool(exact[j] >= cosine)
            if fold:
                folded[j] += 1
            else:
                leaders.append(i)
                folded.append(0)
                fresh.append(b)
    return [Group(hits[i], c) for i, c in zip(leaders, folded, strict=True)]


_BLOCK = 256


def query_cutoff(terms: Sequence[Term], cutoffs: ScoreCutoffs | None, floor: float = -1.0) -> float:
    """The lowest score shown for results of `terms`; `cutoffs=None` applies only `floor`."""
    positive = [t for t in terms if t.weight > 0]
    if cutoffs is None or not positive:
        return floor
    total = sum(t.weight for t in positive)
    mixed = sum(t.weight * getattr(cutoffs, t.modality) for t in positive) / total
    return max(floor, mixed)
