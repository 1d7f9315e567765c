"""Config: the example documents every key, errors name file and key, secrets stay secret."""

import json
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from core.config import ENV_PREFIX, Secrets, Settings, load_settings
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"


def _documented_keys() -> set[str]:
    keys = set()
    section = None
    for line in EXAMPLE.read_text().splitlines():
        line = line.strip().lstrip("#").strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section and "=" in line and line.split("=")[0].strip().isidentifier():
            keys.add(f"{section}.{line.split('=')[0].strip()}")
    return keys


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys |= _model_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_example_documents_every_key_and_loads():
    expected = _model_keys(Settings)
    assert _documented_keys() == expected
    assert tomllib.loads(EXAMPLE.read_text())  # valid TOML


def test_example_values_are_the_defaults():
    loaded = load_settings(EXAMPLE)
    defaults = Settings()
    assert loaded.model_dump(exclude={"model": {"cache_dir"}}) == defaults.model_dump(exclude={"model": {"cache_dir"}})


def test_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[search]\ndefault_limit = "many"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: search\.default_limit"):
        load_settings(bad)
    bad.write_text("[store]\ndatset = 'x'\n")
    with pytest.raises(ConfigError, match=r"store\.datset"):
        load_settings(bad)
    bad.write_text("[store\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_secrets_come_from_env_and_never_show(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "sekrit-discord")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-sekrit")
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    secrets = Secrets.from_env()
    assert secrets.discord_token == "sekrit-discord"
    shown = repr(secrets) + str(secrets)
    assert "sekrit" not in shown and "DISCORD_TOKEN" in shown
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        secrets.require("slack_app_token")


def test_tokens_are_not_accepted_in_the_toml(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\ndiscord_token = "abc"\n')
    with pytest.raises(ConfigError, match="discord_token"):
        load_settings(cfg)


# ----- environment overrides: SEARCH_ALL_<SECTION>__<KEY> --------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_environment_overrides_the_file_and_the_defaults(tmp_path, clean_env):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[search]\ndefault_limit = 3\nmax_limit = 20\n')
    clean_env.setenv("SEARCH_ALL_SEARCH__DEFAULT_LIMIT", "8")
    clean_env.setenv("SEARCH_ALL_SEARCH__CUTOFFS__TEXT", "0.25")  # a table inside a section
    clean_env.setenv("SEARCH_ALL_DISCORD__ALLOWED_GUILDS", "[11, 22]")  # lists as JSON
    clean_env.setenv("SEARCH_ALL_OPS__HEALTH_HOST", "0.0.0.0")
    loaded = load_settings(cfg)
    assert loaded.search.default_limit == 8 and loaded.search.max_limit == 20
    assert loaded.search.cutoffs.text == 0.25
    assert loaded.discord.allowed_guilds == [11, 22]
    assert loaded.ops.health_host == "0.0.0.0"
    assert load_settings().search.default_limit == 8  # no file: over the embedded defaults
    assert isinstance(loaded, Settings) and type(loaded) is Settings


@pytest.mark.parametrize("key", sorted(_model_keys(Settings)))
def test_every_key_can_be_set_from_the_environment(key, clean_env):
    section, _, name = key.partition(".")
    value = Settings().model_dump(mode="json")[section]
    for part in name.split("."):
        value = value[part]
    clean_env.setenv(ENV_PREFIX + key.upper().replace(".", "__"),
                     value if isinstance(value, str) else json.dumps(value))
    assert load_settings().model_dump() == Settings().model_dump()


def test_environment_errors_name_the_variable_and_key(tmp_path, clean_env):
    clean_env.setenv("SEARCH_ALL_SEARCH__DEFAULT_LIMIT", "0")
    with pytest.raises(ConfigError, match=r"^SEARCH_ALL_SEARCH__DEFAULT_LIMIT: search\.default_limit"):
        load_settings()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[search]\n")
    with pytest.raises(ConfigError, match=r"c\.toml with SEARCH_ALL_SEARCH__DEFAULT_LIMIT: search\.default_limit"):
        load_settings(cfg)
    clean_env.delenv("SEARCH_ALL_SEARCH__DEFAULT_LIMIT")
    clean_env.setenv("SEARCH_ALL_STORE__DATSET", "x")
    with pytest.raises(ConfigError, match=r"store\.datset"):
        load_settings()


def test_secrets_cannot_come_through_the_settings_variables(clean_env):
    clean_env.setenv("SEARCH_ALL_DISCORD__TOKEN", "abc")
    with pytest.raises(ConfigError, match="discord.token"):
        load_settings()
