"""S3 access shared by the ingest (an `s3://` source, image uploads) and replies (presigned URLs).

One `S3Connection` says where S3 is (endpoint and region from `[store] s3_endpoint_url` /
`s3_region`); `client()` builds the boto3 client. Credentials come from boto3's default chain:
the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, as SSO and
assumed roles give), a profile (AWS_PROFILE), or the instance or container role; keys given to
the connection explicitly win. URLs are presigned with Signature Version 4.
boto3 is imported only then, so nothing of core needs it unless S3 is configured, and a missing
boto3 is a `ConfigError` with the install line. Clients are made once per connection and process: a forked
ingest worker builds its own rather than sharing the parent's sockets.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from core.config import Secrets, StoreSettings
from core.errors import ConfigError

S3_SCHEME = "s3://"

_clients_lock = threading.Lock()  # guards each connection's client cache


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> `("bucket", "some/prefix")`; a `ConfigError` for anything else."""
    if not url.startswith(S3_SCHEME):
        raise ConfigError(f"{url!r} is not an S3 URL: write s3://bucket/prefix")
    bucket, _, prefix = url[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ConfigError(f"{url!r} names no bucket: write s3://bucket/prefix")
    return bucket, prefix.strip("/")


def describe_s3_error(exc: BaseException) -> str:
    """A one-line reason for a boto3/botocore error, with what to do where that is clear."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        code, message = error.get("Code", "?"), error.get("Message", "")
        hint = {
            "NoSuchBucket": ": create the bucket first, or fix the bucket name",
            "AccessDenied": ": the AWS credentials in use lack permission",
            "InvalidAccessKeyId": ": check AWS_ACCESS_KEY_ID",
            "SignatureDoesNotMatch": ": check AWS_SECRET_ACCESS_KEY",
        }.get(code, "")
        return f"{code} {message}".strip() + hint
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return ("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
                "AWS_SESSION_TOKEN for temporary keys), or AWS_PROFILE, or run with an instance role")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return f"cannot reach S3 ({exc}): check [store] s3_endpoint_url and the network"
    return f"{name}: {exc}"


@dataclass(frozen=True)
class S3Connection:
    """Where S3 is and how to sign in; `repr` never shows the keys."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    max_pool_connections: int = 16
    # Clients made by this process, by kind; not pickled (a worker process makes its own).
    _clients: dict[tuple[int, str], Any] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_clients": {}}

    @classmethod
    def from_settings(
        cls, store: StoreSettings, secrets: Secrets | None = None, *, max_pool_connections: int = 16
    ) -> S3Connection:
        """The connection of `[store]`; credentials from boto3's default chain (`secrets` is kept
        for the callers' symmetry: keys are never read from the TOML, and passing the
        environment's keys explicitly would drop its AWS_SESSION_TOKEN)."""
        return cls(
            endpoint_url=store.s3_endpoint_url,
            region=store.s3_region,
            max_pool_connections=max_pool_connections,
        )

    def deeplake_creds(self) -> dict[str, str]:
        """The `creds` DeepLake wants for an `s3://` dataset: endpoint, region, and the keys the
        default chain resolves now (session token included). Temporary keys are passed as they
        are at this moment: DeepLake does not renew them."""
        creds = {"endpoint_url": self.endpoint_url, "aws_region": self.region}
        if self.access_key_id and self.secret_access_key:
            creds |= {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key}
        else:
            creds |= _default_chain_keys()
        return {k: v for k, v in creds.items() if v}

    def client(self) -> Any:
        """The boto3 S3 client of this process for this connection (thread-safe to share)."""
        return self._client("main", {"max_pool_connections": self.max_pool_connections})

    def probe_client(self) -> Any:
        """A client that gives up fast (short timeouts, no retries): for health checks."""
        return self._client(
            "probe", {"connect_timeout": 2, "read_timeout": 3, "retries": {"max_attempts": 1}}
        )

    def _client(self, kind: str, options: dict[str, Any]) -> Any:
        key = (os.getpid(), kind)
        with _clients_lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = self._new_client(options)
            return client

    def presigned_url(self, bucket: str, key: str, *, seconds: int) -> str:
        """A URL that reads `key` without credentials for `seconds` (signed locally, no request)."""
        return self.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
        )

    def _new_client(self, options: dict[str, Any]) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError("S3 needs boto3: pip install 'search-all[s3]'") from None
        options = dict(options, signature_version="s3v4")
        if self.endpoint_url:  # S3-compatible servers (MinIO, moto, ...) want path-style URLs
            options["s3"] = {"addressing_style": "path"}
        keys = {}
        if self.access_key_id and self.secret_access_key:
            keys = {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key}
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=Config(**options), **keys
        )


def _default_chain_keys() -> dict[str, str | None]:
    """The keys boto3's default chain finds (environment, profile, instance or container role);
    without boto3, the environment's."""
    try:
        import boto3
    except ImportError:
        return {
            "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": os.environ.get("AWS_SESSION_TOKEN"),
        }
    found = boto3.session.Session().get_credentials()
    if found is None:
        return {}
    frozen = found.get_frozen_credentials()
    return {
        "aws_access_key_id": frozen.access_key,
        "aws_secret_access_key": frozen.secret_key,
        "aws_session_token": frozen.token,
    }
