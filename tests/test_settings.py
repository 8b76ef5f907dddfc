"""Settings: one declaration per option gives its flag, variable, default,
parser and README row."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from server.settings import (
    OPTIONS,
    README_TABLE_END,
    README_TABLE_START,
    Settings,
    SettingsError,
    load_settings,
    markdown_table,
    with_markdown_table,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_configuration_table_matches_the_declarations() -> None:
    readme = README.read_text()
    assert README_TABLE_START in readme
    assert README_TABLE_END in readme
    assert with_markdown_table(readme) == readme, "run `make settings-table` and commit README.md"


def test_every_field_but_the_command_is_an_option_with_a_readme_row() -> None:
    fields = [field.name for field in dataclasses.fields(Settings)]
    assert [o.name for o in OPTIONS] == [name for name in fields if name != "command"]
    table = markdown_table()
    for declared in OPTIONS:
        assert f"| `{declared.env}` |" in table
        error = SettingsError(declared.flag, "reason")
        assert str(error) == f"{declared.flag} ({declared.env}): reason"


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers are missing"):
        with_markdown_table("# README\n")


def test_defaults_are_the_declared_defaults(tmp_path: Path) -> None:
    settings = load_settings(["--data-dir", str(tmp_path)], environ={})
    assert dataclasses.replace(settings, data_dir=Path("./var"), database_url="") == Settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.cache_ttl == 30.0
    assert settings.cache_size == 100_000
    assert settings.uvloop is True
    assert settings.log_level == "INFO"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'apikeys.db'}"


def test_flag_wins_over_variable_over_default() -> None:
    environ = {"APIKEYS_CACHE_TTL": "7", "APIKEYS_CACHE_SIZE": "9"}
    settings = load_settings(["--cache-ttl", "3"], environ=environ)
    assert settings.cache_ttl == 3.0
    assert settings.cache_size == 9
    assert settings.negative_cache_size == 100_000


def test_an_empty_value_counts_as_unset() -> None:
    settings = load_settings(["--log-level", ""], environ={"APIKEYS_CACHE_TTL": ""})
    assert settings.log_level == "INFO"
    assert settings.cache_ttl == 30.0


@pytest.mark.parametrize(
    ("listen", "host", "port", "canonical"),
    [
        ("0.0.0.0:8080", "0.0.0.0", 8080, "0.0.0.0:8080"),
        ("[::1]:0", "::1", 0, "[::1]:0"),
        ("::1:50051", "::1", 50051, "[::1]:50051"),
    ],
)
def test_listen_splits_into_host_and_port(
    listen: str, host: str, port: int, canonical: str
) -> None:
    settings = load_settings(["--listen", listen], environ={})
    assert (settings.listen_host, settings.listen_port, settings.listen) == (host, port, canonical)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cache-ttl", "nan"], "--cache-ttl (APIKEYS_CACHE_TTL): must be at least 0"),
        (["--cache-size", "1.5"], "--cache-size (APIKEYS_CACHE_SIZE): '1.5' is not a whole number"),
        (["--change-poll", "0"], "--change-poll (APIKEYS_CHANGE_POLL): must be at least 0.01"),
        (["--uvloop", "yes"], "--uvloop (APIKEYS_UVLOOP): must be one of true, false"),
    ],
)
def test_a_bad_value_names_its_option(args: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(args, environ={})
    assert str(caught.value) == message


def test_a_bad_secret_is_not_quoted_or_chained() -> None:
    value = "c2hvcnQtYnV0LXNlY3JldA=="
    with pytest.raises(SettingsError) as caught:
        load_settings([], environ={"APIKEYS_HMAC_SECRET": value})
    assert caught.value.option == "--hmac-secret"
    assert value not in str(caught.value)
    assert caught.value.__suppress_context__


def test_secrets_are_wrapped() -> None:
    key = "k1:" + "A" * 43 + "="
    settings = load_settings(["--encryption-keys", key], environ={})
    assert settings.encryption_keys is not None
    assert settings.encryption_keys.reveal() == (("k1", bytes(32)),)
    assert "AAAA" not in repr(settings)


HMAC_SECRET = base64.b64encode(b"s" * 32).decode()
ENCRYPTION_KEYS = "k1:" + base64.b64encode(b"e" * 32).decode()
DATABASE_URL = "postgresql+asyncpg://apikeys:hunter2@db.internal:5432/apikeys"


def test_secrets_can_be_given_as_files(tmp_path: Path) -> None:
    files = {"hmac": HMAC_SECRET, "keys": ENCRYPTION_KEYS, "url": DATABASE_URL}
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    args = ["--hmac-secret-file", str(tmp_path / "hmac"), "--database-url-file"]
    environ = {"APIKEYS_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys")}

    settings = load_settings([*args, str(tmp_path / "url")], environ=environ)

    assert settings.hmac_secret is not None
    assert settings.hmac_secret.reveal() == b"s" * 32
    assert settings.encryption_keys is not None
    assert settings.encryption_keys.reveal() == (("k1", b"e" * 32),)
    assert settings.database_url == DATABASE_URL


@pytest.mark.parametrize(
    ("value", "file", "environ"),
    [
        ("--hmac-secret", "--hmac-secret-file", {}),
        ("--encryption-keys", "--encryption-keys-file", {}),
        ("--database-url", "--database-url-file", {}),
        ("--hmac-secret", "--hmac-secret-file", {"APIKEYS_HMAC_SECRET": HMAC_SECRET}),
    ],
)
def test_a_secret_given_both_as_value_and_file_names_both(
    tmp_path: Path, value: str, file: str, environ: dict[str, str]
) -> None:
    texts = {
        "--hmac-secret": HMAC_SECRET,
        "--encryption-keys": ENCRYPTION_KEYS,
        "--database-url": DATABASE_URL,
    }
    path = tmp_path / "secret"
    path.write_text(texts[value])
    args = [file, str(path)] + ([] if environ else [value, texts[value]])

    with pytest.raises(SettingsError) as caught:
        load_settings(args, environ=environ)

    assert caught.value.option == file
    assert value in str(caught.value)
    assert texts[value] not in str(caught.value)


def test_a_bad_secret_file_names_the_file_but_not_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "hmac"
    path.write_text("c2hvcnQtYnV0LXNlY3JldA==")

    with pytest.raises(SettingsError) as caught:
        load_settings(["--hmac-secret-file", str(path)], environ={})

    assert caught.value.option == "--hmac-secret-file"
    assert str(path) in str(caught.value)
    assert "c2hvcnQtYnV0LXNlY3JldA==" not in str(caught.value)
