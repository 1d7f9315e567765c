"""Voice notes through the SearchService and the `search-all search` CLI (tiny model, real
dataset, real pocketsphinx): speech searches like its transcript; sounds stay sounds."""

import json

import pytest

from bot.cli import main
from core.config import Settings
from core.errors import BadInputError
from core.query import Query, Term
from core.startup import open_search_service
from tests.media_factory import picture_folder
from tests.speech_fixtures import clip

N_IMAGES = 16


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = picture_folder(tmp_path_factory.mktemp("pictures"), N_IMAGES)
    dataset = str(tmp_path_factory.mktemp("ds") / "pictures")
    settings = Settings.model_validate(
        {
            "model": {"name": "tiny"},
            "store": {"dataset": dataset},
            "search": {"max_limit": N_IMAGES, "collapse_cosine": 1.0},
        }
    )
    assert main(["ingest", f"folder:{root}", "--dataset", dataset, "--model", "tiny"]) == 0
    return settings


def ranking(result) -> list[tuple[str, float]]:
    return [(item.id, round(item.score, 5)) for item in result.items]


def voice(name: str, weight: float = 1.0) -> Term:
    return Term("audio", clip(name).read(), weight, label=name)


@pytest.mark.parametrize("name", ["red_car.ogg", "banana.m4a"])
async def test_a_voice_note_searches_like_its_transcript(settings, name):
    async with open_search_service(settings, progress=False) as service:
        spoken = await service.search(Query((voice(name),), limit=N_IMAGES))
        typed = await service.search(Query((Term("text", spoken.heard),), limit=N_IMAGES))
        sound = await service.search(Query((voice(name),), limit=N_IMAGES, audio_as="sound"))
    assert set(clip(name).key_words) <= set(spoken.heard.split())
    assert ranking(spoken) == ranking(typed) and len(spoken.items) == N_IMAGES
    assert ranking(spoken) != ranking(sound) and sound.heard == ""


async def test_sound_weight_adds_the_sound_to_the_words(settings):
    mixed = settings.model_copy(update={"speech": settings.speech.model_copy(update={"sound_weight": 0.5})})
    async with open_search_service(mixed, progress=False) as service:
        spoken = await service.search(Query((voice("snow.wav"),), limit=N_IMAGES))
        terms = (Term("text", spoken.heard), Term("audio", clip("snow.wav").read(), 0.5))
        explicit = await service.search(Query(terms, limit=N_IMAGES, audio_as="sound"))
    assert ranking(spoken) == ranking(explicit)


async def test_a_sound_is_searched_as_a_sound_and_sound_mode_transcribes_nothing(settings):
    async with open_search_service(settings, progress=False) as service:
        auto = await service.search(Query((voice("engine.ogg"),), limit=N_IMAGES))
        assert service.audio.transcribed == 1
        sound = await service.search(Query((voice("engine.ogg"),), limit=N_IMAGES, audio_as="sound"))
        await service.search(Query((voice("red_car.ogg"),), limit=N_IMAGES, audio_as="sound"))
        assert service.audio.transcribed == 1
        with pytest.raises(BadInputError, match="no speech recognised in tone.wav"):
            await service.search(Query((voice("tone.wav"),), audio_as="speech"))
    assert ranking(auto) == ranking(sound) and auto.heard == sound.heard == ""


def cli(capsys, settings: Settings, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    dataset = settings.store.dataset
    code = main(["search", "--dataset", dataset, "--model", "tiny", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_cli_shows_what_was_heard(settings, capsys):
    path = str(clip("red_car.m4a").path)
    code, out, err = cli(capsys, settings, "--audio", path, "--json", "--limit", "8")
    assert code == 0, err
    spoken = json.loads(out)
    assert set(clip("red_car.m4a").key_words) <= set(spoken["heard"].split())
    code, out, _ = cli(capsys, settings, "--audio", path, "--limit", "2")
    assert code == 0 and f"heard: {spoken['heard']}" in out.splitlines()
    code, out, _ = cli(capsys, settings, "--audio", path, "--audio-as", "sound", "--json")
    assert code == 0 and json.loads(out)["heard"] == ""


def test_the_cli_refuses_speech_mode_for_a_clip_without_speech(settings, capsys):
    code, _, err = cli(capsys, settings, "--audio", str(clip("tone.wav").path), "--audio-as", "speech")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: no speech recognised in tone.wav")
