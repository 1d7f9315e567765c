"""End to end through the `search-all` CLI with the tiny model: ingest a folder, search it."""

import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from bot.cli import main
from tests.media_factory import make_audio, make_jpeg, make_picture

N_IMAGES = 24


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of distinct images (some in a subfolder, two PNGs, one broken) and its dataset."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    for i in range(N_IMAGES):
        folder = root / "sub" if i % 3 == 0 else root
        data = make_picture(i, "PNG" if i in (5, 11) else "JPEG")
        (folder / f"img{i:02d}.{'png' if i in (5, 11) else 'jpg'}").write_bytes(data)
    (root / "broken.jpg").write_bytes(make_jpeg(seed=99)[:100])
    (root / "notes.txt").write_text("not an image")
    dataset = tmp_path_factory.mktemp("ds") / "collection"
    assert main(["ingest", f"folder:{root}", "--dataset", str(dataset), "--model", "tiny"]) == 0
    return root, dataset


def search_json(capsys, dataset: Path, *args: str, collapse: bool = False) -> dict:
    """Search with near-duplicate folding off (unless `collapse`), so rankings are plain top-k."""
    config = dataset.parent / ("collapse.toml" if collapse else "plain.toml")
    config.write_text("" if collapse else "[search]\ncollapse_cosine = 1.0\n")
    capsys.readouterr()
    code = main(["search", "--config", str(config), "--dataset", str(dataset), "--model", "tiny", "--json", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("img*"))


def test_ingest_reports_and_is_idempotent(collection, capsys):
    root, dataset = collection
    capsys.readouterr()
    assert main(["ingest", f"folder:{root}", "--dataset", str(dataset), "--model", "tiny"]) == 0
    assert "added 0, skipped 24 already present, failed 1" in capsys.readouterr().out


@pytest.mark.parametrize("index", [0, 5, 13, 23])
def test_an_indexed_image_finds_itself_first(collection, capsys, index):
    root, dataset = collection
    path = image_files(root)[index]
    result = search_json(capsys, dataset, "--image", str(path), "--limit", "3")
    top = result["hits"][0]
    assert top["id"] == path.relative_to(root).as_posix()
    assert top["score"] >= 0.999
    assert top["url"] == path.resolve().as_uri()
    assert set(result["timings_ms"]) >= {"encode", "search", "total"}
    assert len(result["hits"]) == 3


@pytest.fixture(scope="module")
def encoder():
    from core.config import MediaLimits, ModelSettings
    from core.encoder import Encoder

    return Encoder.load(ModelSettings(name="tiny"), MediaLimits())


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_results_equal_an_exact_numpy_ranking(collection, capsys, encoder):
    root, dataset = collection
    files = image_files(root)
    matrix = unit(encoder.embed("image", [p.read_bytes() for p in files]))
    query = unit(encoder.embed("text", ["a small house"])[0])
    expected = np.argsort(-(matrix @ query))[:10]
    hits = search_json(capsys, dataset, "--text", "a small house", "--limit", "10")["hits"]
    assert [h["id"] for h in hits] == [files[i].relative_to(root).as_posix() for i in expected]
    np.testing.assert_allclose([h["score"] for h in hits], (matrix @ query)[expected], atol=1e-5)


def test_image_plus_text_still_finds_the_image(collection, capsys, encoder):
    """Fused per-term normalised, image + text keeps the image first; a raw sum would not.

    The tiny model's random weights map many images close together, so a text term can
    legitimately pull the fused vector to a neighbour. The check uses the images that, by the
    geometry of their embeddings, must stay first under correct fusion (their margin to every
    other image exceeds the text's pull); which ones is computed here, not hard-coded.
    """
    root, dataset = collection
    files = image_files(root)
    raw_images = encoder.embed("image", [p.read_bytes() for p in files])
    raw_text = encoder.embed("text", ["a photo of a dog"])[0]
    images, text = unit(raw_images), unit(raw_text)
    to_text = images @ text
    similarity = images @ images.T
    margins = [
        min(1 - similarity[q, j] - (to_text[j] - to_text[q]) for j in range(len(files)) if j != q)
        for q in range(len(files))
    ]
    keepers = [q for q, margin in enumerate(margins) if margin > 0.01]
    assert len(keepers) >= 3
    raw_sum_first = [int(np.argmax(images @ unit(raw_images[q] + raw_text))) for q in keepers]
    assert any(first != q for first, q in zip(raw_sum_first, keepers))  # the raw sum loses them
    for q in keepers:
        args = ("--image", str(files[q]), "--text", "a photo of a dog", "--limit", "1")
        assert search_json(capsys, dataset, *args)["hits"][0]["id"] == files[q].relative_to(root).as_posix()


def test_paging_continues_where_the_first_page_ended(collection, capsys):
    _, dataset = collection
    first = search_json(capsys, dataset, "--text", "castle", "--limit", "4")["hits"]
    second = search_json(capsys, dataset, "--text", "castle", "--limit", "4", "--offset", "4")["hits"]
    both = search_json(capsys, dataset, "--text", "castle", "--limit", "8")["hits"]
    assert [h["id"] for h in first + second] == [h["id"] for h in both]


def test_folded_near_duplicates_are_counted_and_pages_stay_full(collection, capsys):
    _, dataset = collection
    plain = search_json(capsys, dataset, "--text", "castle", "--limit", "10")["hits"]
    folded = search_json(capsys, dataset, "--text", "castle", "--limit", "5", collapse=True)["hits"]
    assert len(folded) == 5
    assert sum(1 + h["similar"] for h in folded) <= N_IMAGES
    assert any(h["similar"] for h in folded)  # the tiny model maps many pictures close together
    assert folded[0]["id"] == plain[0]["id"]


def test_saved_images_are_the_stored_jpegs(collection, capsys, tmp_path):
    root, dataset = collection
    path = image_files(root)[1]  # a JPEG small enough to be kept unchanged
    search_json(capsys, dataset, "--image", str(path), "--limit", "2", "--save", str(tmp_path / "out"))
    assert (tmp_path / "out" / f"01-{path.name}").read_bytes() == path.read_bytes()


def test_saved_results_keep_their_own_names_and_bytes_and_replace_the_last_search(collection, capsys, tmp_path):
    root, dataset = collection
    png = root / "img05.png"
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # not a result: left alone
    first = search_json(capsys, dataset, "--image", str(png), "--limit", "3", "--save", str(out))["hits"]
    assert first[0]["id"] == "img05.png"
    assert (out / "01-img05.png").read_bytes() == png.read_bytes()  # the original, not a re-encode
    assert len(list(out.glob("0*"))) == 3
    second = search_json(capsys, dataset, "--text", "castle", "--limit", "2", "--save", str(out))["hits"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"01-{PurePosixPath(second[0]['id']).name}", f"02-{PurePosixPath(second[1]['id']).name}",
                            "notes.txt"])


def test_audio_query_runs(collection, capsys, tmp_path):
    _, dataset = collection
    clip = tmp_path / "engine.ogg"
    clip.write_bytes(make_audio("ogg", 3.0, kind="noise"))
    hits = search_json(capsys, dataset, "--audio", str(clip), "--limit", "2")["hits"]
    assert len(hits) == 2 and -1 <= hits[0]["score"] <= 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("make", "flag", "message"),
    [
        (lambda d: d.joinpath("bad.jpg").write_bytes(make_jpeg(seed=1)[:200]), "--image", "image"),
        (lambda d: d.joinpath("notes.ogg").write_text("just some text"), "--audio", "audio"),
        (lambda d: d.joinpath("short.wav").write_bytes(make_audio("wav", 0.3)), "--audio", "minimum is 0.5 s"),
    ],
    ids=["corrupt-image", "text-as-audio", "0.3s-audio"],
)
def test_bad_media_gives_a_clear_error(collection, tmp_path, capsys, make, flag, message):
    _, dataset = collection
    make(tmp_path)
    path = next(tmp_path.iterdir())
    capsys.readouterr()
    code = main(["search", "--dataset", str(dataset), "--model", "tiny", flag, str(path)])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last.lower() and "Traceback" not in err


def test_over_limit_file_and_empty_query(collection, tmp_path, capsys):
    _, dataset = collection
    config = tmp_path / "small.toml"
    config.write_text("[limits]\nmax_file_bytes = 1000\n")
    big = tmp_path / "big.jpg"
    big.write_bytes(make_jpeg(400, 400, seed=7))
    capsys.readouterr()
    assert main(["search", "--config", str(config), "--dataset", str(dataset), "--model", "tiny", "--image", str(big)]) == 1
    assert "limit" in capsys.readouterr().err
    assert main(["search", "--dataset", str(dataset), "--model", "tiny"]) == 1
    assert "query is empty" in capsys.readouterr().err
    assert main(["search", "--dataset", str(dataset), "--model", "tiny", "--text", "+ -"]) == 1
    assert "no words" in capsys.readouterr().err


def test_console_script_errors_without_traceback(tmp_path):
    result = run_cli("search", "--dataset", str(tmp_path / "missing"), "--model", "tiny", "--text", "cat")
    assert result.returncode == 1
    assert "error: no dataset at" in result.stderr and "Traceback" not in result.stderr


def test_searching_with_another_model_is_refused(collection, capsys):
    _, dataset = collection
    capsys.readouterr()
    assert main(["search", "--dataset", str(dataset), "--model", "imagebind_huge", "--text", "cat"]) == 1
    err = capsys.readouterr().err
    assert "built with model 'tiny'" in err and "imagebind_huge" in err


def test_the_fatal_line_is_a_json_log_line_when_logs_are_json(tmp_path, capsys):
    config = tmp_path / "json-logs.toml"
    config.write_text('[ops]\nlog_format = "json"\n')
    code = main(["search", "--config", str(config), "--dataset", str(tmp_path / "nothing-here"),
                 "--model", "tiny", "--text", "a cat"])
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(last)
    assert entry["level"] == "error" and entry["message"].startswith("error: no dataset at")


def test_the_model_comes_from_the_dataset_unless_one_is_chosen(collection, capsys, tmp_path, monkeypatch):
    _, dataset = collection
    plain = tmp_path / "plain.toml"
    plain.write_text("[search]\ncollapse_cosine = 1.0\n")
    capsys.readouterr()
    assert main(["search", "--config", str(plain), "--dataset", str(dataset), "--json", "--text", "a small house"]) == 0
    recorded = json.loads(capsys.readouterr().out)["hits"]
    assert recorded == search_json(capsys, dataset, "--text", "a small house")["hits"]  # as with --model tiny

    chosen = tmp_path / "chosen.toml"
    chosen.write_text('[model]\nname = "imagebind_huge"\n')
    assert main(["search", "--config", str(chosen), "--dataset", str(dataset), "--text", "cat"]) == 1
    assert "built with model 'tiny'" in capsys.readouterr().err
    monkeypatch.setenv("SEARCH_ALL_MODEL__NAME", "imagebind_huge")
    assert main(["search", "--dataset", str(dataset), "--text", "cat"]) == 1
    assert "built with model 'tiny'" in capsys.readouterr().err


def test_a_query_may_start_with_a_minus_and_v_may_follow_the_subcommand(collection, capsys):
    _, dataset = collection
    subtracted = search_json(capsys, dataset, "--text", "a small house", "--text", "-photo", "-v")
    written = search_json(capsys, dataset, "--text", "a small house -photo")
    assert subtracted["query"] == written["query"] and "photo" in subtracted["query"]
    assert subtracted["hits"] == written["hits"]


def test_limits_out_of_range_are_said_not_clamped_silently(collection, capsys):
    _, dataset = collection
    capsys.readouterr()
    assert main(["search", "--dataset", str(dataset), "--json", "--text", "castle", "--limit", "50"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)["hits"]) == 10  # [search] max_limit
    # The words of every front end (bot.common.handle.page_size), with the CLI's way on.
    assert "note: Showing 10 results per page, not 50: a page holds at most 10. --offset pages on." in out.err
    with pytest.raises(SystemExit) as refused:
        main(["search", "--dataset", str(dataset), "--text", "castle", "--limit", "0"])
    assert refused.value.code == 2 and "0 is not 1 or more" in capsys.readouterr().err


def test_an_offset_past_the_depth_limit_says_so(collection, capsys):
    from bot.common.reply import DEPTH_NOTICE

    _, dataset = collection
    capsys.readouterr()
    assert main(["search", "--dataset", str(dataset), "--text", "castle", "--offset", "600"]) == 0
    out = capsys.readouterr().out
    assert DEPTH_NOTICE in out and "no results" not in out



def test_the_api_and_search_json_share_one_machine_readable_shape(collection, capsys):
    """#20 item 13: numbers for scores and counts in both, display strings only beside them."""
    from bot.web.app import reply_json
    from core.config import Settings
    from core.service import ResultItem, SearchResult

    _, dataset = collection
    capsys.readouterr()
    assert main(["search", "--dataset", str(dataset), "--json", "--text", "a red fox", "--limit", "2"]) == 0
    cli = json.loads(capsys.readouterr().out)
    items = [ResultItem(h["id"], h["score"], h["text"], h["url"], h["row"], h["width"], h["height"],
                        similar=h["similar"]) for h in cli["hits"]]
    result = SearchResult(cli["query"], items, cli["best_score"], cli["cutoff"], 0, 2, False, "ab" * 10,
                          heard=cli["heard"])
    web = reply_json(result, Settings())
    for key in ("query", "heard", "best_score", "cutoff", "at_depth_limit"):
        assert web[key] == cli[key], key
    for hit, image in zip(cli["hits"], web["images"], strict=True):
        assert {k: image[k] for k in hit} == hit
        assert isinstance(image["score"], float) and isinstance(image["similar"], int)


def test_a_filter_on_images_without_prompts_says_why_nothing_is_found(collection, capsys):
    """#20 item 11: a folder's images have no prompt text; --filter printed a bare "no results"."""
    _, dataset = collection
    capsys.readouterr()
    assert main(["search", "--dataset", str(dataset), "--text", "castle", "--filter", "castle"]) == 1
    out = capsys.readouterr()
    assert "error: this collection has no prompt text to filter on" in out.err and "no results" not in out.out
