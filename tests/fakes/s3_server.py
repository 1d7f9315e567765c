"""A real S3 server on loopback for tests: moto's server, run as a subprocess.

Use the `s3_server` fixture (session-wide: one server for the whole run, a fresh bucket per test
through `S3Server.new_bucket`) together with `s3_env`, which sets fake AWS keys for the test.
moto's in-process threaded server is not used: it hangs DeepLake's first read.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
START_TIMEOUT_S = 30.0
_bucket_numbers = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll until something accepts connections on `port`; fail if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto server exited with status {process.returncode} before listening:"
                " is moto[server] installed? (pip install -e '.[test]')"
            )
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto server did not listen on {HOST}:{port} within {timeout_s:.0f} s")


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen = field(repr=False)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self, stem: str = "bucket") -> str:
        """A new, empty bucket with a name unique within the session."""
        name = f"{stem}-{next(_bucket_numbers)}"
        self.client().create_bucket(Bucket=name)
        return name

    def config_toml(self) -> str:
        """The `[store]` lines that point Search All at this server."""
        return f'[store]\ns3_endpoint_url = "{self.endpoint_url}"\ns3_region = "{REGION}"\n'


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for_port(port, process, START_TIMEOUT_S)
        yield S3Server(f"http://{HOST}:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def s3_env(monkeypatch) -> None:
    """Fake AWS credentials in the environment, and nothing else of AWS's that could interfere."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
