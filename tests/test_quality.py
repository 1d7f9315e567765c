"""Search quality on a dataset with deliberate near-duplicates and prompts: folding, filters,
score cut-offs (issue #9). The tiny model's embeddings are real forward passes of the real
architecture; thresholds are derived from them here, never hard-coded."""

import io

import numpy as np
import pytest
from PIL import Image

from core.config import ScoreCutoffs, SearchSettings, Settings
from core.encoder import Encoder
from core.query import Query, Term
from core.ranking import query_cutoff
from core.service import SearchService
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from core.worker import EncoderWorker
from tests.media_factory import make_picture

BASES = 12
COPIES = 3  # the original, a 90% resize, a quality-60 re-encode


def variant(data: bytes, copy: int) -> bytes:
    if copy == 0:
        return data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if copy == 1:
        image = image.resize((int(image.width * 0.9), int(image.height * 0.9)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=60 if copy == 2 else 85)
    return out.getvalue()


def base_of(item_id: str) -> int:
    return int(item_id.split("-")[0][1:])


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    settings = Settings.model_validate({"model": {"name": "tiny"}})
    return Encoder.load(settings.model, settings.limits, progress=False)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, encoder) -> tuple[str, dict[str, bytes]]:
    files = {
        f"b{b:02d}-c{c}": variant(make_picture(100 + b), c) for b in range(BASES) for c in range(COPIES)
    }
    texts = {key: f"picture {base_of(key)} copy {key[-1]}" for key in files}
    texts["b07-c1"] += " with a zebra"  # one row in 36 has the word
    vectors = encoder.embed("image", list(files.values()))
    path = str(tmp_path_factory.mktemp("quality") / "ds")
    store = DeepLakeStore.create(path, model_name="tiny", dim=encoder.dim)
    records = [
        Record(id=key, embedding=vector, text=texts[key], source="test", image_jpeg=data)
        for (key, data), vector in zip(files.items(), vectors, strict=True)
    ]
    assert store.append(records) == BASES * COPIES
    store.close()
    return path, files


@pytest.fixture(scope="module")
def threshold(encoder, collection) -> float:
    """A folding cosine between the closest distinct pictures and the farthest copies."""
    _, files = collection
    keys = list(files)
    vectors = encoder.embed("image", [files[k] for k in keys])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = unit @ unit.T
    same = np.array([[base_of(a) == base_of(b) for b in keys] for a in keys])
    upper = np.triu_indices(len(keys), 1)
    copies_min, distinct_max = cos[upper][same[upper]].min(), cos[upper][~same[upper]].max()
    assert copies_min > distinct_max  # the data has a gap to fold at
    return float((copies_min + distinct_max) / 2)


async def open_service(path, encoder, search: SearchSettings, cutoffs=None):
    store = DeepLakeStore.open(path, expect_model="tiny")
    worker = EncoderWorker(encoder)
    await worker.__aenter__()
    return SearchService(worker, store, search, cutoffs=cutoffs), worker, store


@pytest.fixture
async def services(collection, encoder, threshold):
    path, _ = collection
    opened = []

    async def make(cutoffs=None, **search):
        settings = SearchSettings(**{"max_limit": 40, "collapse_cosine": threshold, **search})
        service, worker, store = await open_service(path, encoder, settings, cutoffs)
        opened.append((worker, store))
        return service

    yield make
    for worker, store in opened:
        await worker.__aexit__(None, None, None)
        store.close()


async def test_a_page_of_five_shows_five_different_pictures_with_fold_counts(services, collection):
    _, files = collection
    folding = await services()
    plain = await services(collapse_cosine=1.0)
    query = Query((Term("image", files["b03-c0"]),), limit=5)
    page = await folding.search(query)
    ranked = (await plain.search(Query(query.terms, limit=40))).items
    assert len(page.items) == 5
    bases = [base_of(i.id) for i in page.items]
    assert len(set(bases)) == 5 and bases[0] == 3
    # Each shown picture is the best-ranked copy of its base, and folds the other copies that
    # the candidate set (limit + 1 groups x candidate_factor rows) held.
    candidates = ranked[: (5 + 1) * folding.settings.candidate_factor]
    for item in page.items:
        same = [h for h in candidates if base_of(h.id) == base_of(item.id)]
        assert item.id == same[0].id
        assert item.similar == len(same) - 1 == COPIES - 1


async def test_the_next_page_continues_with_other_pictures(services, collection):
    _, files = collection
    service = await services()
    first = await service.search(Query((Term("image", files["b05-c2"]),), limit=5))
    second = await service.page(first.page_key, first.next_offset)
    shown = [base_of(i.id) for i in first.items + second.items]
    assert len(shown) == len(set(shown)) == 10
    assert second.offset == 5 and second.description == first.description
    last = await service.page(first.page_key, 10)
    assert [base_of(i.id) for i in last.items] and not last.has_more  # 12 groups: 2 left
    assert len(last.items) == BASES - 10


async def test_a_filter_matching_one_row_still_returns_it(services, collection):
    _, files = collection
    service = await services()
    query = Query((Term("image", files["b01-c0"]),), limit=5, include=("ZEBRA",))
    result = await service.search(query)
    assert [i.id for i in result.items] == ["b07-c1"] and not result.has_more
    excluded = await service.search(Query(query.terms, limit=40, exclude=("zebra", "copy 2")))
    ids = {i.id for i in excluded.items}
    assert "b07-c1" not in ids and not any(i.endswith("c2") for i in ids) and ids


async def test_no_good_match_keeps_the_best_score(services, collection):
    _, files = collection
    service = await services(cutoffs=ScoreCutoffs(text=0.999, image=0.999, audio=0.999, item=0.999))
    result = await service.search(Query((Term("text", "a cat"),), limit=5))
    assert result.items == [] and result.no_good_match and result.best_score < result.cutoff == 0.999
    same = await service.search(Query((Term("image", files["b02-c0"]),), limit=5))
    assert [i.id for i in same.items] == ["b02-c0"]  # only the exact image scores 1.0
    assert not same.has_more


def test_the_cut_off_of_a_mix_is_the_weighted_average_of_its_positive_terms():
    cutoffs = ScoreCutoffs(text=0.2, image=0.6, audio=0.1, item=0.5)
    text, image = Term("text", "a"), Term("image", b"x", 3.0)
    assert query_cutoff([text], cutoffs) == pytest.approx(0.2)
    assert query_cutoff([text, image], cutoffs) == pytest.approx((0.2 + 3 * 0.6) / 4)
    assert query_cutoff([text, Term("audio", b"x", -2.0)], cutoffs) == pytest.approx(0.2)
    assert query_cutoff([text], cutoffs, floor=0.5) == 0.5
    assert query_cutoff([text], None, floor=-1.0) == -1.0
