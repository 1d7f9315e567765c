"""Typed configuration: one TOML file, validated in one place, secrets from the environment.

`load_settings(path)` reads the TOML file (every key is optional; `config.example.toml`
documents each one with its default) and validates it with pydantic. Errors name the file and
the key. Secrets (tokens, keys) are never read from the TOML: `Secrets.from_env()` reads them
from environment variables at startup, and their `repr` never shows a value.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "search-all"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """Which ImageBind to run, where its weights come from, and how it computes."""

    name: Literal["imagebind_huge", "tiny"] = "imagebind_huge"
    checkpoint_path: Path | None = None
    checkpoint_url: str | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int = Field(default=0, ge=0)


class EncoderSettings(_Section):
    """The worker thread that runs the model and batches requests that arrive together."""

    batch_window_ms: float = Field(default=5.0, ge=0, le=1000)
    max_batch_size: int = Field(default=8, ge=1, le=256)
    text_cache_size: int = Field(default=1024, ge=0)


class MediaLimits(_Section):
    """Limits on what a user may send; each breach is a clear error, not a crash."""

    max_file_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    max_audio_seconds: float = Field(default=300.0, gt=0)
    min_audio_seconds: float = Field(default=0.5, ge=0)
    max_query_chars: int = Field(default=1000, gt=0)
    max_terms: int = Field(default=16, gt=0)


class StoreSettings(_Section):
    """Where the collection lives (a DeepLake dataset) and how it is searched."""

    dataset: str = "data/lexica"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    search: Literal["auto", "exact", "index"] = "auto"
    exact_max_rows: int = Field(default=2_000_000, gt=0)


class ImageSettings(_Section):
    """How replies point at result images: a public URL when images are on S3, else the bytes."""

    public_base_url: str | None = None


class SearchSettings(_Section):
    """What a search returns by default."""

    default_limit: int = Field(default=5, ge=1, le=50)
    max_limit: int = Field(default=10, ge=1, le=100)
    min_score: float = Field(default=-1.0, ge=-1.0, le=1.0)


class Settings(_Section):
    model: ModelSettings = ModelSettings()
    encoder: EncoderSettings = EncoderSettings()
    limits: MediaLimits = MediaLimits()
    store: StoreSettings = StoreSettings()
    images: ImageSettings = ImageSettings()
    search: SearchSettings = SearchSettings()


def load_settings(path: Path | str | None = None) -> Settings:
    """Read and validate a TOML config file; `None` gives the embedded defaults."""
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def _secret(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class Secrets:
    """Tokens and keys, from environment variables only; `repr` shows which are set, never values."""

    discord_token: str | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)

    ENV_NAMES = {
        "discord_token": "DISCORD_TOKEN",
        "slack_bot_token": "SLACK_BOT_TOKEN",
        "slack_signing_secret": "SLACK_SIGNING_SECRET",
        "slack_app_token": "SLACK_APP_TOKEN",
        "aws_access_key_id": "AWS_ACCESS_KEY_ID",
        "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    }

    @classmethod
    def from_env(cls) -> Secrets:
        return cls(**{attr: _secret(env) for attr, env in cls.ENV_NAMES.items()})

    def __repr__(self) -> str:
        present = [env for attr, env in self.ENV_NAMES.items() if getattr(self, attr)]
        return f"Secrets(set={present})"

    def require(self, attr: str) -> str:
        value = getattr(self, attr)
        if not value:
            raise ConfigError(f"environment variable {self.ENV_NAMES[attr]} is not set")
        return value
