"""Folding near-duplicates (core/ranking.py): the blocked, vectorised fold groups and counts
exactly as the original one-hit-at-a-time loop, kept here as the reference, for every input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core import ranking
from core.ranking import Group, fold_near_duplicates
from core.store.base import Hit


def reference_fold(hits, vectors, cosine):
    """The fold as it was before the vectorised one (issue 17, item 4): O(N^2 d) in Python."""
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


def hits_for(n: int) -> list[Hit]:
    return [Hit(f"i{i}", 1.0 - i / 1000, "", "", "", 1, 1, i) for i in range(n)]


def summary(groups: list[Group]) -> list[tuple[str, int]]:
    return [(g.hit.id, g.folded) for g in groups]


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Few distinct values: exact duplicates, ties between leaders, zero vectors, cosines hit exactly.
COMPONENTS = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 1e-3, -0.25])
COSINES = st.one_of(
    st.sampled_from([0.0, 0.5, 0.6, 0.70710677, 0.8, 0.9, 0.95, 0.999, 1.0, -0.5, 0.9999999]),
    st.floats(-1.0, 1.2, allow_nan=False),
)


@st.composite
def inputs(draw):
    n, d = draw(st.integers(0, 40)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    if draw(st.booleans()):
        vectors = draw(hnp.arrays(dtype, (n, d), elements=COMPONENTS))
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        bases = rng.standard_normal((max(1, n // 3), d))
        vectors = (bases[rng.integers(0, len(bases), n)] + 0.05 * rng.standard_normal((n, d))).astype(dtype)
    return vectors, draw(COSINES), draw(st.sampled_from([1, 2, 3, 5, 7, 256]))


@PROPERTY
@given(inputs())
def test_the_fold_matches_the_reference_loop(example):
    vectors, cosine, block = example
    hits = hits_for(len(vectors))
    original, ranking._BLOCK = ranking._BLOCK, block  # small blocks: many leaders span blocks
    try:
        folded = fold_near_duplicates(hits, vectors, cosine)
    finally:
        ranking._BLOCK = original
    assert summary(folded) == summary(reference_fold(hits, vectors, cosine))


@pytest.mark.parametrize("n,dim,cosine", [(1500, 64, 0.5), (900, 1024, 0.95), (700, 16, 0.2)])
def test_the_fold_matches_the_reference_on_collection_sized_input(n, dim, cosine):
    rng = np.random.default_rng(n)
    bases = rng.standard_normal((n // 3 + 1, dim), dtype=np.float32)
    vectors = np.repeat(bases, 3, axis=0)[:n] + 0.05 * rng.standard_normal((n, dim), dtype=np.float32)
    hits = hits_for(n)
    assert summary(fold_near_duplicates(hits, vectors, cosine)) == summary(reference_fold(hits, vectors, cosine))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_embeddings_fold_as_before():
    vectors = np.array([[1, 0], [np.nan, 0], [1, 0.01], [np.inf, 1], [0, 0], [0, 1]], dtype=np.float32)
    hits = hits_for(len(vectors))
    for cosine in (0.0, 0.5, 0.99):
        assert summary(fold_near_duplicates(hits, vectors, cosine)) == summary(reference_fold(hits, vectors, cosine))
