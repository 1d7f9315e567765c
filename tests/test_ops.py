"""Operations: health and metrics endpoints, dataset refresh while serving, logs without secrets."""

import asyncio
import io
import json
import logging
import socket
import time

import aiohttp
import pytest

from bot.ops import ops_app, serve_ops
from bot.slack.app import SlackBot, serve_slack
from core.config import Secrets, Settings
from core.encoder import Encoder
from core.errors import UnsupportedMediaError
from core.logs import setup_logging
from core.query import Query, Term
from core.startup import open_search_service
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from tests.fakes.loopback import serve_on_loopback
from tests.fakes.slack import FakeSlack, command_body, event_payload, message_event, signed_headers
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
        runner, port = await serve_on_loopback(ops_app(service))
        base = f"http://127.0.0.1:{port}"
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


def free_port() -> int:
    """A port nobody listens on now, on 127.0.0.1 (the ops endpoint needs a number: 0 is off)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_running_slack_bot_serves_health_and_metrics_of_the_searches_it_answered(dataset):
    """`serve_slack` (what `search-all bot slack` runs) with `[ops] health_port` set: /healthz
    answers 200 while it runs and /metrics counts the searches it served, failed ones too;
    the endpoint closes with the bot."""
    secrets = Secrets(slack_bot_token="xoxb-ops-test", slack_signing_secret="ops-signing-secret")
    async with FakeSlack(bot_token="xoxb-ops-test") as fake, aiohttp.ClientSession() as http:
        ops_port = free_port()
        settings = Settings.model_validate({
            "model": {"name": "tiny"}, "store": {"dataset": dataset}, "speech": {"engine": "none"},
            "slack": {"api_base_url": fake.api_url, "host": "127.0.0.1", "port": 0, "file_hosts": [fake.host]},
            "ops": {"health_host": "127.0.0.1", "health_port": ops_port, "refresh_seconds": 0},
        })
        ready: asyncio.Future[SlackBot] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        serving = asyncio.create_task(
            serve_slack(settings, secrets, socket_mode=False, stop=stop, on_ready=ready.set_result))
        try:
            done, _ = await asyncio.wait({serving, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert ready in done, serving.exception() if serving.done() else "the bot did not start"
            bot = ready.result()
            events = f"http://127.0.0.1:{bot.address[1]}/slack/events"
            for text in ("a red circle", "a blue square"):
                body = command_body(text, user="U0OPS", channel="C0OPS", response_url=fake.response_url("ops"))
                headers = {"Content-Type": "application/x-www-form-urlencoded",
                           **signed_headers("ops-signing-secret", body)}
                async with http.post(events, data=body.encode(), headers=headers) as response:
                    assert response.status == 200
            picture = fake.add_file("notes.png", b"not a picture", "image/png")
            event = event_payload(message_event("message", "", user="U0OPS", channel="D0OPS",
                                                ts="1700000000.000001", files=[picture]), event_id="Ev0OPS1")
            body = json.dumps(event)
            headers = {"Content-Type": "application/json", **signed_headers("ops-signing-secret", body)}
            async with http.post(events, data=body.encode(), headers=headers) as response:
                assert response.status == 200
            await fake.wait_for_calls("chat.postMessage", 2)
            await fake.wait_for_calls("chat.postEphemeral", 1)
            await bot.drain()
            async with http.get(f"http://127.0.0.1:{ops_port}/healthz") as response:
                assert response.status == 200
                assert (await response.json())["rows"] == 6
            async with http.get(f"http://127.0.0.1:{ops_port}/metrics") as response:
                metrics = await response.text()
        finally:
            stop.set()
            await asyncio.wait_for(serving, 30)
        assert 'search_all_searches_total{kind="search",modalities="text"} 2.0' in metrics
        assert 'search_all_errors_total{error="UnsupportedMediaError"} 1.0' in metrics
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"http://127.0.0.1:{ops_port}/healthz"):
                pass
