"""Typed configuration: one TOML file, validated in one place, secrets from the environment.

`load_settings(path)` reads the TOML file (every key is optional; `config.example.toml`
documents each one with its default), lets an environment variable `SEARCH_ALL_<SECTION>__<KEY>`
override any key (pydantic-settings; lists and tables as JSON), and validates the result with
pydantic. Errors name the file, the variables and the key. Secrets (tokens, keys) are never read
from the TOML: `Secrets.from_env()` reads them from environment variables at startup, and their
`repr` never shows a value.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigError

ENV_PREFIX = "SEARCH_ALL_"  # SEARCH_ALL_SEARCH__DEFAULT_LIMIT=8 overrides [search] default_limit
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "search-all"


ModelName = Literal["imagebind_huge", "tiny"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """Which ImageBind to run, where its weights come from, and how it computes."""

    # Unset: search, web and bots take the model the dataset records; ingest uses this default.
    name: ModelName = "imagebind_huge"
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
    # "auto": exact search in memory up to exact_max_rows rows, the approximate index (kept
    # beside the dataset by the ingest, core/store/ann) beyond; "exact" / "index" force one.
    search: Literal["auto", "exact", "index"] = "auto"
    # Exact search costs about 0.19 ms per 1,000 rows of 1024-d here (benchmarks/README.md,
    # store): 10 ms near 50k rows, where the index answers in about 1 ms.
    exact_max_rows: int = Field(default=50_000, gt=0)


class ImageSettings(_Section):
    """How replies point at result images: a public URL when images are on S3, else the bytes."""

    public_base_url: str | None = None


class IngestSettings(_Section):
    """How `search-all ingest` reads and writes: batches, and the processes that decode."""

    batch_size: int = Field(default=16, ge=1, le=1024)
    workers: int = Field(default=2, ge=0, le=64)


class S3Settings(_Section):
    """Images on S3: uploaded by the ingest, linked (public or presigned URLs) in replies.

    Endpoint and region are `[store] s3_endpoint_url` / `s3_region`; keys come from the
    environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    """

    bucket: str | None = None
    prefix: str = "images"
    upload_images: bool = False
    upload_threads: int = Field(default=8, ge=1, le=64)
    url_mode: Literal["public", "presigned"] = "public"
    presign_seconds: int = Field(default=3600, ge=1, le=604_800)
    # Keep a copy of each uploaded image in the dataset too, so replies fall back to it while
    # S3 is unreachable (about 50-150 KB per image).
    keep_in_dataset: bool = True
    # How often a running bot checks that the bucket answers, seconds (0: never; always link).
    health_check_seconds: float = Field(default=30.0, ge=0)

    @field_validator("prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip("/")

    @model_validator(mode="after")
    def _bucket_when_used(self) -> S3Settings:
        if (self.upload_images or self.url_mode == "presigned") and not self.bucket:
            raise ValueError("upload_images = true and url_mode = 'presigned' need a bucket: set [s3] bucket")
        return self


class ScoreCutoffs(_Section):
    """Lowest cosine score shown, by the modality of the query (see docs/scores.md).

    A query that mixes modalities uses the average of its positive terms' cut-offs, weighted by
    their weights. "item" is "more like this" (a stored image embedding). -1 shows everything.
    """

    text: float = Field(default=0.15, ge=-1.0, le=1.0)
    image: float = Field(default=0.45, ge=-1.0, le=1.0)
    audio: float = Field(default=0.05, ge=-1.0, le=1.0)
    item: float = Field(default=0.45, ge=-1.0, le=1.0)


class SearchSettings(_Section):
    """What a search returns by default."""

    default_limit: int = Field(default=5, ge=1, le=50)
    max_limit: int = Field(default=10, ge=1, le=100)
    min_score: float = Field(default=-1.0, ge=-1.0, le=1.0)
    # Results within this cosine of a better result are folded into it ("+N similar"); 1 = off.
    collapse_cosine: float = Field(default=0.95, ge=0.0, le=1.0)
    # Candidates read per shown result, to fill a page after folding (grown when needed).
    candidate_factor: int = Field(default=4, ge=1, le=100)
    # Where "Next page" buttons remember their query (a SQLite file); default: in cache_dir.
    page_memory_path: Path | None = None
    page_memory_days: float = Field(default=7.0, gt=0)
    cutoffs: ScoreCutoffs = ScoreCutoffs()


class SpeechSettings(_Section):
    """How voice notes are understood (speech-to-text) before they are searched."""

    # "pocketsphinx" (offline, English, the embedded default), "whisper" (faster-whisper:
    # better, downloads a model on first use), or "none" (audio is always a sound).
    engine: Literal["pocketsphinx", "whisper", "none"] = "pocketsphinx"
    # Weight of the sound itself next to the words when speech is found (0 = words only).
    sound_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    whisper_model: str = "small"
    whisper_device: Literal["auto", "cpu", "cuda"] = "auto"
    whisper_compute_type: str = "default"
    language: str = "en"
    # The recogniser runs in a worker process of its own (pocketsphinx holds the GIL): voice
    # notes waiting or being transcribed at most; one more is refused with "try again".
    max_queued_clips: int = Field(default=8, ge=1, le=1000)
    # Seconds one clip may take in the recogniser; past that it is refused and the worker
    # restarted (a 30 s clip takes about 3 s with pocketsphinx on one core).
    clip_timeout_s: float = Field(default=60.0, gt=0, le=3600)


class BotSettings(_Section):
    """What both chat bots share."""

    # Searches per user: `rate_limit_burst` at once, refilled at `rate_limit_per_minute`.
    rate_limit_per_minute: float = Field(default=10.0, gt=0)
    rate_limit_burst: int = Field(default=5, ge=1)
    max_attachments: int = Field(default=4, ge=1, le=10)
    # Longest prompt text shown under a result.
    caption_chars: int = Field(default=200, ge=20, le=1000)


class DiscordSettings(_Section):
    """The Discord bot (token from DISCORD_TOKEN)."""

    api_base_url: str = "https://discord.com/api/v10"
    # Empty: ask Discord. Set for Discord-compatible servers (Spacebar) and tests.
    gateway_url: str = ""
    # Attachments are only downloaded from these hosts.
    attachment_hosts: list[str] = ["cdn.discordapp.com", "media.discordapp.net"]
    # Empty lists allow every guild / channel.
    allowed_guilds: list[int] = []
    allowed_channels: list[int] = []
    # Ask for the privileged Message Content intent (docs/discord.md). Mentions, DMs and context
    # menus work without it; turn it on in the Developer Portal before setting this to true.
    message_content_intent: bool = False


SLACK_BOT_SCOPES = ["app_mentions:read", "chat:write", "commands", "files:read", "files:write", "im:history"]


class SlackSettings(_Section):
    """The Slack bot (SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET; SLACK_APP_TOKEN for Socket Mode;
    SLACK_CLIENT_ID, SLACK_CLIENT_SECRET instead of SLACK_BOT_TOKEN with `oauth`)."""

    api_base_url: str = "https://slack.com/api/"
    mode: Literal["http", "socket"] = "http"
    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=0, le=65535)
    # Files are only downloaded (with the bot token) from these hosts.
    file_hosts: list[str] = ["files.slack.com"]
    allowed_channels: list[str] = []
    # Many workspaces (docs/slack.md): Slack's OAuth flow at /slack/install, each workspace's
    # bot token kept in `installations_path` (SQLite). HTTP mode only.
    oauth: bool = False
    installations_path: Path = Path("data/slack-installations.sqlite")
    # The Redirect URL Slack sends installers back to (…/slack/oauth_redirect); unset: the
    # first one in the app's OAuth & Permissions page.
    redirect_url: str | None = None
    scopes: list[str] = SLACK_BOT_SCOPES
    # Where installers approve the app (GovSlack: "https://slack-gov.com/oauth/v2/authorize").
    authorize_url: str = "https://slack.com/oauth/v2/authorize"


class OpsSettings(_Section):
    """Running in production: logs, the health and metrics endpoint, dataset refreshes."""

    log_format: Literal["text", "json"] = "text"
    # The bots serve GET /healthz and GET /metrics (Prometheus) here; port 0 turns it off.
    health_host: str = "127.0.0.1"  # the container image sets SEARCH_ALL_OPS__HEALTH_HOST=0.0.0.0
    health_port: int = Field(default=9090, ge=0, le=65535)
    # How often a running bot looks for rows added to the dataset (by an ingest); 0 = never.
    refresh_seconds: float = Field(default=60.0, ge=0)
    # On SIGTERM / SIGINT: seconds the front ends get to answer what is in flight before closing.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)


class WebSettings(_Section):
    """The local web page (`search-all web`, or `search-all serve` with the bots)."""

    host: str = "127.0.0.1"
    port: int = Field(default=7860, ge=0, le=65535)
    # `search-all serve` also serves the page (`--web` / `--no-web` override); `search-all web` always does.
    enabled: bool = False


class MemorySettings(_Section):
    """Channel memory (docs/memory.md): the images posted in channels that turned it on."""

    # Off: no channel can turn memory on, and the Discord bot does not ask for Message Content.
    enabled: bool = False
    # Where memory lives: channels.sqlite (which channels are on) and tenants/<platform>-<id>/
    # (one DeepLake dataset per server or workspace). Keep it private and backed up.
    dir: Path = Path("data/memory")
    # Longest side of the thumbnail kept of each image (a JPEG without metadata).
    thumbnail_side: int = Field(default=512, ge=64, le=2048)
    thumbnail_quality: int = Field(default=85, ge=30, le=95)
    # Most past messages one `/memory on backfill:N` may read.
    backfill_max: int = Field(default=1000, ge=0, le=100_000)
    # What /search looks in where memory is on, unless `source:` says otherwise.
    default_source: Literal["collection", "memory", "both"] = "both"
    # How long a member's channel permissions are trusted before they are read again, seconds.
    access_cache_seconds: float = Field(default=60.0, ge=0, le=3600)
    # Images embedded per background batch, and the most of the encoder's time indexing may
    # take while queries are coming (queries always go first).
    index_batch_size: int = Field(default=4, ge=1, le=64)
    index_share: float = Field(default=0.1, gt=0, le=1)
    # Tenants whose memory stays loaded at once (least recently used unloaded first).
    max_open_tenants: int = Field(default=64, ge=1)


class Settings(_Section):
    model: ModelSettings = ModelSettings()
    encoder: EncoderSettings = EncoderSettings()
    limits: MediaLimits = MediaLimits()
    store: StoreSettings = StoreSettings()
    images: ImageSettings = ImageSettings()
    ingest: IngestSettings = IngestSettings()
    s3: S3Settings = S3Settings()
    search: SearchSettings = SearchSettings()
    speech: SpeechSettings = SpeechSettings()
    bot: BotSettings = BotSettings()
    discord: DiscordSettings = DiscordSettings()
    slack: SlackSettings = SlackSettings()
    web: WebSettings = WebSettings()
    memory: MemorySettings = MemorySettings()
    ops: OpsSettings = OpsSettings()


class _SettingsWithEnvironment(BaseSettings, Settings):
    """`Settings` whose every key an environment variable overrides (the environment wins over
    the file, so a container changes one setting without a new TOML)."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_parse_none_str="null"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings


def load_settings(path: Path | str | None = None) -> Settings:
    """Read a TOML config file (`None`: the embedded defaults), apply the `SEARCH_ALL_*`
    environment variables over it, and validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        merged = _SettingsWithEnvironment(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        variables = ", ".join(sorted(name for name in os.environ if name.startswith(ENV_PREFIX)))
        where = " with ".join(part for part in (str(path) if path else "", variables) if part)
        raise ConfigError(f"{where or 'settings'}: {problems}") from None
    # Only what the file and the environment set counts as chosen (`model_fields_set`).
    return Settings.model_validate(merged.model_dump(exclude_unset=True))


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
    slack_client_id: str | None = field(default=None, repr=False)
    slack_client_secret: str | None = field(default=None, repr=False)
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)

    ENV_NAMES = {
        "discord_token": "DISCORD_TOKEN",
        "slack_bot_token": "SLACK_BOT_TOKEN",
        "slack_signing_secret": "SLACK_SIGNING_SECRET",
        "slack_app_token": "SLACK_APP_TOKEN",
        "slack_client_id": "SLACK_CLIENT_ID",
        "slack_client_secret": "SLACK_CLIENT_SECRET",
        "aws_access_key_id": "AWS_ACCESS_KEY_ID",
        "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "aws_session_token": "AWS_SESSION_TOKEN",
    }

    @classmethod
    def from_env(cls) -> Secrets:
        return cls(**{attr: _secret(env) for attr, env in cls.ENV_NAMES.items()})

    def __repr__(self) -> str:
        present = [env for attr, env in self.ENV_NAMES.items() if getattr(self, attr)]
        return f"Secrets(set={present})"

    def values(self) -> list[str]:
        """Every secret that is set (for log redaction)."""
        return [v for attr in self.ENV_NAMES if (v := getattr(self, attr))]

    def require(self, attr: str) -> str:
        value = getattr(self, attr)
        if not value:
            raise ConfigError(f"environment variable {self.ENV_NAMES[attr]} is not set")
        return value
