"""The score cut-off of a query: which cosine counts as a match depends on what is compared.

ImageBind's cosines live in different ranges per modality pair: a text and an image that match
score far lower than two images that match (see docs/scores.md). A query made of several
terms gets the average of its positive terms' cut-offs, weighted by their weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.config import ScoreCutoffs
from core.query import Term


def query_cutoff(terms: Sequence[Term], cutoffs: ScoreCutoffs | None, floor: float = -1.0) -> float:
    """The lowest score shown for results of `terms`; `cutoffs=None` applies only `floor`."""
    positive = [t for t in terms if t.weight > 0]
    if cutoffs is None or not positive:
        return floor
    total = sum(t.weight for t in positive)
    mixed = sum(t.weight * getattr(cutoffs, t.modality) for t in positive) / total
    return max(floor, mixed)
