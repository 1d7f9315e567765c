"""Ingest sources: a Hugging Face dataset saved locally (no hub here), and source parsing."""

import datasets
import pytest
from PIL import Image

from bot.cli import main
from core.errors import BadInputError, ConfigError
from core.s3.client import S3Connection
from core.store.deeplake_store import DeepLakeStore
from ingest.sources.factory import parse_source
from ingest.sources.folder import FolderSource
from ingest.sources.huggingface import HuggingFaceSource
from ingest.sources.s3 import S3Source
from tests.media_factory import make_picture


def test_parse_source(tmp_path):
    assert parse_source("hf:xfh/lexica_6k") == HuggingFaceSource("xfh/lexica_6k", "train")
    assert parse_source("hf:some/set:test") == HuggingFaceSource("some/set", "test")
    assert parse_source(f"folder:{tmp_path}") == FolderSource(tmp_path)
    with pytest.raises(BadInputError, match="unknown source"):
        parse_source("ftp://x")
    with pytest.raises(BadInputError, match="does not exist"):
        parse_source(f"folder:{tmp_path / 'nope'}")
    s3 = S3Connection("http://127.0.0.1:9", "us-east-1")
    parsed = parse_source("s3://bucket/some/prefix/", s3=s3, s3_page_size=5)
    assert parsed == S3Source("bucket", "some/prefix", s3, 5)
    assert parse_source("s3://bucket", s3=s3).prefix == ""
    with pytest.raises(ConfigError, match="names no bucket"):
        parse_source("s3:///prefix")


def test_hf_dataset_is_ingested_with_its_prompts(tmp_path, capsys):
    import io

    images = [Image.open(io.BytesIO(make_picture(i))) for i in range(6)]
    prompts = [f"prompt number {i}, watercolor" for i in range(6)]
    table = datasets.Dataset.from_dict({"image": images, "prompt": prompts})
    table = table.cast_column("image", datasets.Image())
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": table}).save_to_disk(str(saved))
    dataset = tmp_path / "ds"
    args = ["ingest", f"hf:{saved}", "--dataset", str(dataset), "--model", "tiny", "--batch-size", "4"]
    assert main([*args, "--workers", "2"]) == 0  # rows read by worker processes
    assert "added 6, skipped 0 already present, failed 0" in capsys.readouterr().out
    assert main([*args, "--workers", "0"]) == 0
    assert "added 0, skipped 6 already present, failed 0" in capsys.readouterr().out
    store = DeepLakeStore.open(str(dataset))
    hits = store.search(store.embedding("train/4"), 1)
    assert hits[0].id == "train/4" and hits[0].text == "prompt number 4, watercolor"
    assert hits[0].source == f"hf:{saved}"
    store.close()


def test_hf_dataset_without_images_is_a_clear_error(tmp_path):
    saved = tmp_path / "text_only"
    datasets.Dataset.from_dict({"prompt": ["a"]}).save_to_disk(str(saved))
    with pytest.raises(BadInputError, match="no image column"):
        list(HuggingFaceSource(str(saved)).refs())
