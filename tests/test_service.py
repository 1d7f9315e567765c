"""SearchService over a real dataset: negative terms, stored-embedding terms, cache, cut-off."""

import asyncio
import io

import numpy as np
import pytest

from core.config import SearchSettings, Settings
from core.encoder import Encoder
from core.errors import BadInputError, NoPromptTextError
from core.query import Query, Term
from core.startup import open_search_service
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from tests.media_factory import picture_folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pictures")


@pytest.fixture(scope="module")
def settings(tmp_path_factory, root) -> Settings:
    picture_folder(root, 20)
    dataset = str(tmp_path_factory.mktemp("ds") / "pictures")
    settings = Settings.model_validate(
        {
            "model": {"name": "tiny"},
            "store": {"dataset": dataset},
            "search": {"max_limit": 20, "collapse_cosine": 1.0},
        }
    )
    encoder = Encoder.load(settings.model, settings.limits)
    files = sorted(root.iterdir())
    vectors = encoder.embed("image", [f.read_bytes() for f in files])
    store = DeepLakeStore.create(dataset, model_name="tiny", dim=encoder.dim)
    store.append(
        [Record(id=f.name, embedding=v, image_jpeg=f.read_bytes()) for f, v in zip(files, vectors, strict=True)]
    )
    store.close()
    return settings


def ranks(result) -> list[str]:
    return [item.id for item in result.items]


async def test_a_negative_term_moves_results_away(settings, root):
    x, y = (root / "p03.jpg").read_bytes(), (root / "p07.jpg").read_bytes()
    async with open_search_service(settings, progress=False) as service:
        plain = await service.search(Query((Term("image", x),), limit=20))
        away = await service.search(Query((Term("image", x), Term("image", y, -1.0)), limit=20))
    assert ranks(away).index("p07.jpg") > ranks(plain).index("p07.jpg")
    score = {item.id: item.score for item in plain.items}
    assert {item.id: item.score for item in away.items}["p07.jpg"] < score["p07.jpg"]


async def test_more_like_this_uses_the_stored_embedding_without_the_encoder(settings):
    async with open_search_service(settings, progress=False) as service:
        result = await service.search(Query((Term("item", "p05.jpg"),), limit=3))
        assert result.items[0].id == "p05.jpg" and result.items[0].score == pytest.approx(1.0, abs=1e-5)
        assert sum(service.worker.batch_sizes.values()) == 0
        with pytest.raises(BadInputError, match="no image with id"):
            await service.search(Query((Term("item", "nope.jpg"),)))


async def test_repeated_text_terms_are_served_from_the_cache(settings):
    async with open_search_service(settings, progress=False) as service:
        first = await service.search(Query((Term("text", "a red circle"),)))
        passes = sum(service.worker.batch_sizes.values())
        second = await service.search(Query((Term("text", "a red circle"),)))
        assert sum(service.worker.batch_sizes.values()) == passes == 1
    assert ranks(first) == ranks(second)


async def test_score_cut_off_keeps_the_best_score(settings):
    strict = settings.model_copy(
        update={"search": SearchSettings(max_limit=20, min_score=0.9999, collapse_cosine=1.0)}
    )
    async with open_search_service(strict, progress=False) as service:
        result = await service.search(Query((Term("text", "a dog"),)))
    assert result.items == [] and result.best_score is not None and result.best_score < 0.9999


async def test_image_bytes_come_back_from_the_dataset(settings, root):
    data = (root / "p02.jpg").read_bytes()
    async with open_search_service(settings, progress=False) as service:
        result = await service.search(Query((Term("image", data),), limit=1))
        assert await service.image_bytes(result.items[0]) == data
    assert np.isfinite(result.timings_ms["total"])


async def test_stored_copies_are_served_without_metadata(tmp_path):
    """A dataset ingested before copies were stripped still holds EXIF (GPS): what the bots
    upload and the web page serves has none, and a picture its EXIF turns is served turned."""
    from PIL import Image

    from tests.test_media import photo_with_gps

    dataset = str(tmp_path / "old")
    store = DeepLakeStore.create(dataset, model_name="tiny", dim=64)
    originals = [photo_with_gps(1), photo_with_gps(6)]
    store.append([Record(id=f"p{i}.jpg", embedding=np.eye(64, dtype=np.float32)[i], image_jpeg=data)
                  for i, data in enumerate(originals)])
    store.close()
    settings = Settings.model_validate({"model": {"name": "tiny"}, "store": {"dataset": dataset}})
    async with open_search_service(settings, progress=False) as service:
        served = [await service.stored_image(row) for row in (0, 1)]
    for data in served:
        for private in (b"Exif", b"PhoneMaker", b"xmpmeta", b"taken at home"):
            assert private not in data
    assert Image.open(io.BytesIO(served[0])).size == (60, 40)
    assert Image.open(io.BytesIO(served[1])).size == (40, 60)  # orientation 6: turned


async def test_more_like_this_names_the_image_it_started_from(settings):
    """#20 item 10: the header said "more like result #5" for dataset row 5, read as a rank."""
    async with open_search_service(settings, progress=False) as service:
        first = await service.search(Query((Term("text", "a red circle"),), limit=5))
        clicked = first.items[3]
        more = await service.more_like_row(clicked.row, 3)
    assert more.description == f"more like {clicked.id}"
    assert more.items[0].id == clicked.id


async def test_more_like_this_names_the_rank_clicked_and_the_image(settings):
    """#20 item 10: the rank the user saw (across pages) and the name, when the button has it."""
    async with open_search_service(settings, progress=False) as service:
        second_page = await service.search(Query((Term("text", "a red circle"),), limit=5, offset=5))
        clicked = second_page.items[1]  # shown as #7
        more = await service.more_like_row(clicked.row, 3, rank=7)
    assert more.description == f"more like #7 ({clicked.id})"
    assert more.items[0].id == clicked.id


@pytest.fixture(scope="module")
def texted_settings(tmp_path_factory, settings) -> Settings:
    """A small collection whose images have prompts (the folder-built one has none)."""
    with DeepLakeStore.open(settings.store.dataset) as pictures:
        dim = pictures.info.dim
    dataset = str(tmp_path_factory.mktemp("texted") / "prompts")
    vectors = np.random.default_rng(0).standard_normal((3, dim)).astype(np.float32)
    with DeepLakeStore.create(dataset, model_name="tiny", dim=dim) as store:
        store.append([Record(id=f"t{i}", embedding=v, text=f"a {word} house")
                      for i, (v, word) in enumerate(zip(vectors, ("red", "blue", ""), strict=True))])
    return Settings.model_validate({**settings.model_dump(), "store": {"dataset": dataset}})


async def test_a_filter_on_a_collection_without_prompt_text_says_why_nothing_is_found(settings, texted_settings):
    """#20 item 11: `filter:` on a folder's images (no prompts) answered a bare "no results"."""
    query = Query((Term("text", "a red circle"),), limit=3, include=("red",))
    async with open_search_service(settings, progress=False) as service:
        assert not await asyncio.to_thread(service.store.has_text)
        with pytest.raises(NoPromptTextError, match="this collection has no prompt text to filter on"):
            await service.search(query)
        excluded = await service.search(Query(query.terms, limit=3, exclude=("red",)))
        assert len(excluded.items) == 3  # nothing to exclude: every image passes
    async with open_search_service(texted_settings, progress=False) as service:
        assert await asyncio.to_thread(service.store.has_text)
        assert [i.id for i in (await service.search(query)).items] == ["t0"]
        nothing = await service.search(Query(query.terms, limit=3, include=("green",)))
        assert nothing.items == [] and nothing.best_score is None  # the filter matched nothing


async def test_a_one_off_search_starts_no_speech_worker_until_a_clip_needs_it(settings):
    """The CLI opens the service with warm_speech=False: a text search spawns no process."""
    async with open_search_service(settings, progress=False, warm_speech=False) as service:
        await service.search(Query((Term("text", "a red circle"),), limit=3))
        assert service.audio.process.pid is None
    async with open_search_service(settings, progress=False) as service:  # a bot: warmed at once
        await service.search(Query((Term("text", "a red circle"),), limit=3))
        warming = service.audio.process._warming
        assert warming is not None
        await warming
        assert service.audio.process.pid is not None
