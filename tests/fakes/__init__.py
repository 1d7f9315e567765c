"""Stand-ins for the services the bots and the ingest talk to, all on 127.0.0.1.

- `slack`: the Slack Web API, Socket Mode and the file host (`FakeSlack`), signed requests.
- `discord`: the Discord gateway, REST API and CDN (`FakeDiscord`).
- `s3_server`: a real S3 server (moto) as a subprocess, and its pytest fixtures.
- `loopback`: starting an aiohttp test server on 127.0.0.1 at a free port.
- `slack_load`: driving many signed Slack commands at once against the real Bolt app and the
  fake Slack (the load test, and benchmarks/load_slack.py).
"""
