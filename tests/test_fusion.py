"""Fusion: per-term normalisation makes the modalities comparable."""

import numpy as np
import pytest

from core.errors import BadInputError
from core.fusion import fuse, normalize


def test_fused_vector_is_unit_length_and_scale_free():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=64), rng.normal(size=64)
    fused = fuse([image, 14.3 * text], [1.0, 1.0])
    assert np.linalg.norm(fused) == pytest.approx(1.0, abs=1e-6)
    # the text head's scale does not matter: only directions and weights do
    np.testing.assert_allclose(fused, fuse([image, text], [1.0, 1.0]), atol=1e-6)
    # equal weights: equal cosine to both unit inputs
    assert fused @ normalize(image) == pytest.approx(fused @ normalize(text), abs=1e-5)


def test_raw_sum_would_let_the_long_vector_win():
    rng = np.random.default_rng(1)
    image, text = normalize(rng.normal(size=64)), 14.3 * normalize(rng.normal(size=64))
    raw = normalize(image + text)
    assert raw @ normalize(text) > 0.99  # the naive sum is almost only the text
    assert fuse([image, text], [1, 1]) @ image > 0.7


def test_negative_weight_moves_away():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=64), rng.normal(size=64)
    assert fuse([a, b], [1.0, -0.5]) @ normalize(b) < fuse([a], [1.0]) @ normalize(b)


def test_cancelling_terms_are_a_user_error():
    v = np.ones(8)
    with pytest.raises(BadInputError, match="cancel"):
        fuse([v, v], [1.0, -1.0])
