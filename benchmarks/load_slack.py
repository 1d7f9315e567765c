"""Load test of the Slack bot's HTTP endpoint: signed `/search` commands, many at once.

    python benchmarks/load_slack.py                          # 200 commands, 20 at a time
    python benchmarks/load_slack.py --requests 50 --concurrency 5 --timeout 120

Everything runs on 127.0.0.1 in this process and stops by itself: the real Bolt app
(`running_slack_bot`) serving `/slack/events`, the fake Slack Web API of tests/fake_slack.py
answering its calls (chat.postMessage, the uploads of the result images), the `tiny` model over a
small dataset built in a temporary folder, and `concurrency` simulated users, each sending a
signed command and waiting for its answer before sending the next. Each command has its own
text (no cache hits), user (no rate limit) and channel (to match answers to commands).

Measured per command: the ack (the HTTP response to Slack's POST, due within 3 s) and the time
until the answer is posted (chat.postMessage received by the fake; the uploads of the images
follow). Exit status 1 when a command failed (not 200, an error told to the user, no answer or
more than one) or an ack took over 3 s; 2 when the global timeout was reached.

The load generator, the fake Slack and the bot share one event loop and the machine's cores, so
the times are upper bounds of what the bot alone would show.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.slack_bot import EVENTS_PATH, running_slack_bot  # noqa: E402
from core.app import open_search_service  # noqa: E402
from core.config import Secrets, Settings  # noqa: E402
from ingest.runner import run_ingest  # noqa: E402
from tests.fake_slack import FakeSlack, command_body, signed_headers  # noqa: E402
from tests.media_factory import make_picture  # noqa: E402

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

    def summary(self) -> str:
        def stats(values: list[float]) -> str:
            if not values:
                return "none"
            ordered = sorted(values)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            return (f"p50 {1000 * statistics.median(ordered):.0f} ms, p95 {1000 * p95:.0f} ms, "
                    f"max {1000 * ordered[-1]:.0f} ms")

        lines = [
            f"{self.requests} commands, {self.concurrency} at a time, {self.wall_s:.1f} s "
            f"({self.requests / self.wall_s:.1f} commands/s)" if self.wall_s else "not run",
            f"errors: {len(self.errors)}; acks over {ACK_LIMIT_S:g} s: {len(self.slow_acks)}; "
            f"answered exactly once: {sum(n == 1 for n in self.answers.values())}/{self.requests}",
            f"ack:            {stats(list(self.ack_s.values()))}",
            f"answer posted:  {stats(list(self.answer_s.values()))}",
        ]
        lines += [f"  command {i}: {error}" for i, error in sorted(self.errors.items())[:10]]
        return "\n".join(lines)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0, help="global limit, seconds")
    args = parser.parse_args()
    if not 1 <= args.concurrency <= args.requests <= 10_000:
        parser.error("need 1 <= concurrency <= requests <= 10000")
    with tempfile.TemporaryDirectory(prefix="load-slack-") as work:
        try:
            report = asyncio.run(run_load(args.requests, args.concurrency, work_dir=Path(work),
                                          timeout_s=args.timeout))
        except TimeoutError:
            print(f"timed out after {args.timeout:g} s", file=sys.stderr)
            return 2
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
