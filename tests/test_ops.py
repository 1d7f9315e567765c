"""Operations: health and metrics endpoints, dataset refresh while serving, logs without secrets."""

import asyncio
import io
import json
import logging
import time

import aiohttp
import numpy as np
import pytest

from aiohttp import web

from bot.ops_server import ops_app, serve_ops
from core.app import open_search_service
from core.config import Settings
from core.deeplake_store import DeepLakeStore
from core.encoder import Encoder
from core.errors import UnsupportedMediaError
from core.logs import setup_logging
from core.query import Query, Term
from core.store import Record
from tests.media_factory import make_picture


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    settings = Settings.model_validate({"model": {"name": "tiny"}})
    return Encoder.load(settings.model, settings.limits, progress=False)


@pytest.fixture
def dataset(tmp_path, encoder) -> str:
    path = str(tmp_path / "ds")
    pictures = [make_picture(300 + i) for i in range(6)]
    store = DeepLakeStore.create(path, model_name="tiny", dim=encoder.dim)
    vectors = encoder.embed("image", pictures)
    store.append([Record(id=f"p{i}", embedding=v, image_jpeg=d) for i, (v, d) in enumerate(zip(vectors, pictures))])
    store.close()
    return path


def settings_for(dataset: str, **ops) -> Settings:
    return Settings.model_validate(
        {"model": {"name": "tiny"}, "store": {"dataset": dataset}, "ops": {"refresh_seconds": 0, **ops}}
    )


async def test_health_and_metrics(dataset):
    async with open_search_service(settings_for(dataset), progress=False) as service:
        async with serve_ops(service, "127.0.0.1", 0) as off:
            assert off is None  # port 0: no endpoint
        runner = web.AppRunner(ops_app(service))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            await service.search(Query((Term("text", "a cat"),), limit=2))
            with pytest.raises(UnsupportedMediaError):
                await service.search(Query((Term("image", b"not an image"),)))
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as response:
                    assert response.status == 200
                    assert (await response.json())["rows"] == 6
                async with http.get(f"{base}/metrics") as response:
                    text = await response.text()
            assert 'search_all_searches_total{kind="search",modalities="text"} 1.0' in text
            assert 'search_all_errors_total{error="UnsupportedMediaError"} 1.0' in text
            assert 'search_all_encoder_batches_total{size="1"}' in text
            assert 'search_all_search_seconds_count{stage="total"} 1.0' in text
            await service.worker.aclose()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as response:
                    assert response.status == 503 and "encoder" in (await response.json())["reason"]
        finally:
            await runner.cleanup()


async def test_rows_added_by_an_ingest_become_searchable_without_a_restart(dataset, encoder):
    async with open_search_service(settings_for(dataset, refresh_seconds=0.05), progress=False) as service:
        assert service.store.info.rows == 6
        picture = make_picture(999)
        writer = DeepLakeStore.open(dataset, mode="exact", read_only=False)
        writer.append([Record(id="new", embedding=encoder.embed("image", [picture])[0], image_jpeg=picture)])
        writer.close()
        deadline = time.monotonic() + 30  # bounded wait for the background refresh
        while service.store.info.rows == 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        result = await service.search(Query((Term("image", picture),), limit=1))
    assert result.items[0].id == "new" and result.items[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logs_never_contain_a_secret(fmt):
    token = "xoxb-1234567890-secret-token"
    out = io.StringIO()
    handler = setup_logging(level=logging.INFO, fmt=fmt, secrets=[token, None, "short"], stream=out)
    try:
        log = logging.getLogger("search_all.test")
        log.info("calling the API with %s", token)
        try:
            raise RuntimeError(f"request failed: Authorization: Bearer {token}")
        except RuntimeError:
            log.exception("upload failed")
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert token not in text and text.count("[redacted]") >= 2
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert lines[0]["level"] == "info" and lines[0]["logger"] == "search_all.test"
        assert "exception" in lines[1]
