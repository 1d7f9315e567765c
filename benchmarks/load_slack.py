"""Load test of the Slack bot's HTTP endpoint: signed `/search` commands, many at once.

    python benchmarks/load_slack.py                          # 200 commands, 20 at a time
    python benchmarks/load_slack.py --requests 50 --concurrency 5 --timeout 120

The setup (the real Bolt app, the fake Slack Web API, the `tiny` model, the simulated users) is
`tests/fakes/slack_load.py`'s, which says what runs where; everything stays on 127.0.0.1.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.slack_load import ACK_LIMIT_S, LoadReport, run_load  # noqa: E402


def summary(report: LoadReport) -> str:
    def stats(values: list[float]) -> str:
        if not values:
            return "none"
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return (f"p50 {1000 * statistics.median(ordered):.0f} ms, p95 {1000 * p95:.0f} ms, "
                f"max {1000 * ordered[-1]:.0f} ms")

    lines = [
        f"{report.requests} commands, {report.concurrency} at a time, {report.wall_s:.1f} s "
        f"({report.requests / report.wall_s:.1f} commands/s)" if report.wall_s else "not run",
        f"errors: {len(report.errors)}; acks over {ACK_LIMIT_S:g} s: {len(report.slow_acks)}; "
        f"answered exactly once: {sum(n == 1 for n in report.answers.values())}/{report.requests}",
        f"ack:            {stats(list(report.ack_s.values()))}",
        f"answer posted:  {stats(list(report.answer_s.values()))}",
    ]
    lines += [f"  command {i}: {error}" for i, error in sorted(report.errors.items())[:10]]
    return "\n".join(lines)


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
    print(summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
