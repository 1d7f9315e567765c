"""The Slack load test (tests/fakes/slack_load.py, also run by benchmarks/load_slack.py) at a small
size: 20 signed commands, 5 at a time, against the real Bolt app and the fake Slack. Every command
is acked with 200 and answered exactly once, with results and no error; its timings are the
benchmark's business, not asserted."""

from __future__ import annotations

from tests.fakes.slack_load import run_load


async def test_twenty_concurrent_commands_are_each_answered_exactly_once(tmp_path):
    report = await run_load(20, 5, work_dir=tmp_path, timeout_s=240)
    assert report.errors == {}
    assert sorted(report.ack_s) == list(range(20))
    assert report.answers == {i: 1 for i in range(20)}
    assert sorted(report.answer_s) == list(range(20))
