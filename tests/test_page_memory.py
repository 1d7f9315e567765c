"""Page memory: what "Next page" buttons need survives a restart, and expires."""

import numpy as np
import pytest

from core.page_memory import ExpiredPageError, PageMemory, SavedQuery


def saved(seed: int = 0, **changes) -> SavedQuery:
    vector = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    fields = dict(
        vector=vector / np.linalg.norm(vector), include=("red",), exclude=("blue car",), limit=5,
        description="cat + dog", heard="a cat", cutoff=0.2,
    )
    return SavedQuery(**{**fields, **changes})


def test_a_saved_query_is_read_back_by_a_new_process(tmp_path):
    path = tmp_path / "pages.sqlite"
    first = PageMemory(path)
    key = first.save(saved())
    first.close()
    again = PageMemory(path).load(key)
    original = saved()
    np.testing.assert_array_equal(again.vector, original.vector)
    assert (again.include, again.exclude, again.limit, again.description, again.heard, again.cutoff) == (
        original.include, original.exclude, original.limit, original.description, original.heard,
        original.cutoff,
    )


def test_keys_are_short_stable_and_differ_with_the_query():
    memory = PageMemory(None)
    key = memory.save(saved())
    assert len(key) <= 40 and key == memory.save(saved())
    assert key != memory.save(saved(seed=1)) != memory.save(saved(include=("green",)))


def test_unknown_and_expired_keys_say_search_again(tmp_path):
    memory = PageMemory(tmp_path / "p.sqlite", max_age_days=1e-9)
    key = memory.save(saved())
    with pytest.raises(ExpiredPageError, match="search again"):
        memory.load(key)
    with pytest.raises(ExpiredPageError):
        PageMemory(None).load("0123456789abcdef0123")
