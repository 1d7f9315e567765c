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


class Clock:
    """A clock the test moves by hand (no sleeps)."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_expired_entries_are_pruned_as_searches_are_saved_not_only_at_start(tmp_path):
    """Issue 17, item 14: the file no longer grows until the next restart."""
    clock = Clock()
    memory = PageMemory(tmp_path / "p.sqlite", max_age_days=1, prune_every=10, clock=clock)
    old = [memory.save(saved(seed)) for seed in range(10)]
    assert memory.entries() == 10 and memory.load(old[0]).description == "cat + dog"
    clock.now += 2 * 86400  # the first ten expire
    fresh = [memory.save(saved(seed)) for seed in range(100, 110)]  # the 20th save prunes
    assert memory.entries() == 10
    assert memory.load(fresh[-1]).limit == 5
    with pytest.raises(ExpiredPageError):
        memory.load(old[-1])


def test_only_the_newest_entries_are_kept(tmp_path):
    clock = Clock()
    path = tmp_path / "p.sqlite"
    memory = PageMemory(path, max_entries=50, prune_every=10, clock=clock)
    keys = []
    for seed in range(300):
        clock.now += 1
        keys.append(memory.save(saved(seed)))
        assert memory.entries() <= 50 + 10
    assert memory.entries() == 50
    assert memory.load(keys[-1]) and memory.load(keys[-50])
    with pytest.raises(ExpiredPageError):
        memory.load(keys[-51])
    # Saving a remembered search again makes it the newest.
    clock.now += 1
    assert memory.save(saved(250)) == keys[250]
    memory.close()
    again = PageMemory(path, max_entries=5, clock=clock)  # a smaller cap applies on opening
    assert again.entries() == 5 and again.load(keys[250]) and again.load(keys[-1])
