"""S3 credentials come from boto3's default chain, and URLs are signed with Signature Version 4.

A session token (SSO, an assumed role) must reach S3 with every request and every presigned URL,
and reach DeepLake for an `s3://` dataset; a profile must work without keys in the environment.
The requests go to a recording server on 127.0.0.1 that answers like S3 would to a HEAD.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("boto3")

from core.config import Secrets, Settings, StoreSettings  # noqa: E402
from core.s3.client import S3Connection  # noqa: E402
from core.startup import store_creds  # noqa: E402

TOKEN = "session-token-from-sso"
KEY_ID, SECRET = "AKIDFROMENV", "secret-from-env"
PROFILE_KEY_ID = "AKIDFROMPROFILE"


@contextmanager
def recording_s3() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An endpoint that answers every HEAD with an empty object and records the headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - the http.server name
            seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.send_header("ETag", '"0"')
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Nothing of the machine's AWS setup: no config files, no keys, no metadata endpoint."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def temporary_keys(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)


def test_the_session_token_reaches_s3_with_each_request(aws_env, monkeypatch):
    temporary_keys(monkeypatch)
    with recording_s3() as (url, seen):
        store = StoreSettings(s3_endpoint_url=url, s3_region="us-east-1")
        S3Connection.from_settings(store, Secrets.from_env()).client().head_object(Bucket="images-1", Key="a.jpg")
    assert len(seen) == 1
    headers = {k.lower(): v for k, v in seen[0].items()}
    assert headers["x-amz-security-token"] == TOKEN
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=" + KEY_ID + "/")


def test_presigned_urls_are_sigv4_and_carry_the_session_token(aws_env, monkeypatch):
    temporary_keys(monkeypatch)
    store = StoreSettings(s3_endpoint_url="http://127.0.0.1:9", s3_region="eu-west-1")
    url = S3Connection.from_settings(store).presigned_url("images-1", "a.jpg", seconds=600)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Security-Token"] == [TOKEN]
    assert query["X-Amz-Expires"] == ["600"]
    assert "Signature" not in query and "AWSAccessKeyId" not in query  # not the old SigV2 form


def test_a_profile_signs_without_keys_in_the_environment(aws_env, monkeypatch):
    (aws_env / "credentials").write_text(
        f"[ops]\naws_access_key_id = {PROFILE_KEY_ID}\naws_secret_access_key = profile-secret\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "ops")
    with recording_s3() as (url, seen):
        store = StoreSettings(s3_endpoint_url=url, s3_region="us-east-1")
        S3Connection.from_settings(store, Secrets.from_env()).client().head_object(Bucket="images-1", Key="a.jpg")
    assert seen[0]["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={PROFILE_KEY_ID}/")


def test_deeplake_gets_the_session_token_for_an_s3_dataset(aws_env, monkeypatch):
    temporary_keys(monkeypatch)
    settings = Settings.model_validate(
        {"store": {"dataset": "s3://data-1/lexica", "s3_endpoint_url": "http://127.0.0.1:9", "s3_region": "us-east-1"}}
    )
    creds = store_creds(settings, Secrets.from_env())
    assert creds == {
        "endpoint_url": "http://127.0.0.1:9",
        "aws_region": "us-east-1",
        "aws_access_key_id": KEY_ID,
        "aws_secret_access_key": SECRET,
        "aws_session_token": TOKEN,
    }


def test_the_session_token_is_a_secret_never_shown(monkeypatch):
    temporary_keys(monkeypatch)
    secrets = Secrets.from_env()
    assert TOKEN in secrets.values() and TOKEN not in repr(secrets)
