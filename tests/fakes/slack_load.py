"""Driving the Slack bot's HTTP endpoint with many signed `/search` commands at once.

Everything runs on 127.0.0.1 in this process and stops by itself: the real Bolt app
(`running_slack_bot`) serving `/slack/events`, the fake Slack Web API of tests/fakes/slack.py
answering its calls (chat.postMessage, the uploads of the result images), the `tiny` model over a
small dataset built in a temporary folder, and `concurrency` simulated users, each sending a
signed command and waiting for its answer before sending the next. Each command has its own
text (no cache hits), user (no rate limit) and channel (to match answers to commands).

Measured per command: the ack (the HTTP response to Slack's POST, due within 3 s) and the time
until the answer is posted (chat.postMessage received by the fake; the uploads of the images
follow). A command fails when it is not acked with 200, an error is told to the user, or it gets
no answer or more than one. Used by tests/test_slack_load.py and benchmarks/load_slack.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bot.slack.app import EVENTS_PATH, running_slack_bot
from core.config import Secrets, Settings
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.fakes.slack import FakeSlack, command_body, signed_headers
from tests.media_factory import make_picture

ACK_LIMIT_S = 3.0
BOT_TOKEN = "xoxb-load-test"
SIGNING_SECRET = "load-test-signing-secret"
SECRETS = Secrets(slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET)
PICTURES = 12
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "grey")
THINGS = ("circle", "square", "boat", "cloud", "tree", "house", "star", "car", "moon", "bird")


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    ack_s: dict[int, float] = field(default_factory=dict)
    answer_s: dict[int, float] = field(default_factory=dict)
    answers: dict[int, int] = field(default_factory=dict)  # chat.postMessage calls per command
    errors: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def slow_acks(self) -> list[int]:
        return sorted(i for i, s in self.ack_s.items() if s > ACK_LIMIT_S)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.slow_acks and len(self.ack_s) == self.requests


def build_dataset(root: Path) -> dict:
    """Settings (raw) of a `tiny` dataset of PICTURES generated pictures under `root`."""
    pictures = root / "pictures"
    pictures.mkdir(parents=True)
    for i in range(PICTURES):
        (pictures / f"p{i:02d}.jpg").write_bytes(make_picture(i))
    raw = {
        "model": {"name": "tiny", "cache_dir": str(root / "cache")},
        "store": {"dataset": str(root / "dataset")},
        "search": {"page_memory_path": str(root / "pages.sqlite")},
        "speech": {"engine": "none"},
        "ops": {"refresh_seconds": 0, "health_port": 0},
    }
    run_ingest(Settings.model_validate(raw), f"folder:{pictures}", secrets=Secrets(), workers=0, progress=False)
    return raw


def query(i: int) -> str:
    return f"a {COLOURS[i % 10]} {THINGS[i // 10 % 10]} number {i}"


class Answers:
    """What the fake Slack has received, per channel, read incrementally (each command waits on
    its own channel without rescanning every call)."""

    def __init__(self, fake: FakeSlack):
        self.fake = fake
        self.read = 0
        self.posted: dict[str, list[float]] = defaultdict(list)  # channel -> times of chat.postMessage
        self.told: dict[str, list[str]] = defaultdict(list)  # channel -> errors told to the user

    def update(self) -> None:
        calls = self.fake.calls
        while self.read < len(calls):
            call = calls[self.read]
            self.read += 1
            channel = str(call.params.get("channel", ""))
            if call.method == "chat.postMessage" and call.status == 200:
                self.posted[channel].append(call.at)
            elif call.method == "chat.postEphemeral":
                self.told[channel].append(str(call.params.get("text")))

    def answered(self, channel: str, response_id: str) -> bool:
        self.update()
        return bool(self.posted[channel] or self.told[channel]) or any(
            r["_url_id"] == response_id for r in self.fake.responses
        )


async def run_load(requests: int, concurrency: int, *, work_dir: Path, timeout_s: float = 600.0) -> LoadReport:
    """Send `requests` signed commands, `concurrency` at a time, and measure (see the module doc).
    Raises `TimeoutError` past `timeout_s` (the dataset build included)."""
    report = LoadReport(requests, concurrency)
    async with asyncio.timeout(timeout_s):
        raw = await asyncio.to_thread(build_dataset, work_dir)
        async with FakeSlack(bot_token=BOT_TOKEN) as fake:
            settings = Settings.model_validate({
                **raw,
                "slack": {"api_base_url": fake.api_url, "host": "127.0.0.1", "port": 0, "file_hosts": [fake.host]},
            })
            async with (
                open_search_service(settings, secrets=SECRETS, progress=False) as service,
                running_slack_bot(service, settings, SECRETS, socket_mode=False) as bot,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            ):
                assert bot.address is not None
                url = f"http://127.0.0.1:{bot.address[1]}{EVENTS_PATH}"
                answers = Answers(fake)
                next_command = iter(range(requests))

                async def one(i: int) -> None:
                    channel, response_id = f"C0LOAD{i:05d}", f"load-{i}"
                    body = command_body(query(i), user=f"U0LOAD{i:05d}", channel=channel,
                                        response_url=fake.response_url(response_id))
                    headers = {"Content-Type": "application/x-www-form-urlencoded",
                               **signed_headers(SIGNING_SECRET, body)}
                    start = time.perf_counter()
                    try:
                        async with http.post(url, data=body.encode(), headers=headers) as response:
                            await response.read()
                            status = response.status
                    except aiohttp.ClientError as exc:
                        report.errors[i] = f"request failed: {type(exc).__name__}: {exc}"
                        return
                    report.ack_s[i] = time.perf_counter() - start
                    if status != 200:
                        report.errors[i] = f"HTTP {status}"
                        return
                    await fake.wait_for(lambda: answers.answered(channel, response_id), timeout=timeout_s)
                    if answers.posted[channel]:
                        report.answer_s[i] = answers.posted[channel][0] - start

                async def user() -> None:
                    for i in next_command:
                        await one(i)

                started = time.perf_counter()
                await asyncio.gather(*(user() for _ in range(concurrency)))
                report.wall_s = time.perf_counter() - started
                await bot.drain()  # the image uploads of the last answers
                answers.update()
                for i in range(requests):
                    channel = f"C0LOAD{i:05d}"
                    report.answers[i] = len(answers.posted[channel])
                    told = answers.told[channel] + [r.get("text", "") for r in fake.responses
                                                    if r["_url_id"] == f"load-{i}"]
                    if i not in report.errors and (told or report.answers[i] != 1):
                        report.errors[i] = f"{report.answers[i]} answers; told: {told}"
    return report
