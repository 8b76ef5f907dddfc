"""One frozen settings object, loaded once at start.

Every option is both a command-line flag and an ``APIKEYS_*`` environment
variable; a flag wins over the variable, the variable over the default.
Invalid values raise ``SettingsError`` naming the option, which the entry
point prints as one line before exiting with status 2.

Secrets are wrapped in ``Secret`` so that no repr, log line or error message
can show them.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import secrets as secrets_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, NoReturn, TypeVar

from server.domain.keys import parse_encryption_keys, parse_hmac_secret
from server.files import publish_new_file
from server.store import check_database_url

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATA_DIR = "./var"
DEFAULT_CACHE_TTL = 30.0
DEFAULT_CACHE_SIZE = 100_000
DEFAULT_NEGATIVE_CACHE_TTL = 5.0
DEFAULT_NEGATIVE_CACHE_SIZE = 100_000
DEFAULT_LAST_USED_FLUSH = 5.0
DEFAULT_CHANGE_POLL = 1.0
DEFAULT_SHUTDOWN_GRACE = 5.0
DEFAULT_WORKERS = 1

HMAC_SECRET_FILE = "hmac-secret"  # noqa: S105 - a file name
ENCRYPTION_KEYS_FILE = "encryption-keys"
SQLITE_FILE = "apikeys.db"


T = TypeVar("T")


class SettingsError(Exception):
    """An option has a value the service cannot run with."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        env = "APIKEYS_" + option.removeprefix("--").replace("-", "_").upper()
        super().__init__(f"{option} ({env}): {reason}")


class Secret(Generic[T]):
    """A value that must never be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """The wrapped value, for the one place that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything the service is configured with."""

    command: str = "serve"
    listen_host: str = "127.0.0.1"
    listen_port: int = 50051
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str = ""
    hmac_secret: Secret[bytes] | None = None
    encryption_keys: Secret[tuple[tuple[str, bytes], ...]] | None = None
    admin_public_keys: Path | None = None
    admin_audience: str | None = None
    admin_issuer: str | None = None
    routes: Path | None = None
    cache_ttl: float = DEFAULT_CACHE_TTL
    cache_size: int = DEFAULT_CACHE_SIZE
    negative_cache_ttl: float = DEFAULT_NEGATIVE_CACHE_TTL
    negative_cache_size: int = DEFAULT_NEGATIVE_CACHE_SIZE
    last_used_flush: float = DEFAULT_LAST_USED_FLUSH
    change_poll: float = DEFAULT_CHANGE_POLL
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    workers: int = DEFAULT_WORKERS
    uvloop: bool = True
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def listen(self) -> str:
        """``host:port`` as gRPC's ``add_insecure_port`` takes it."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    @property
    def is_postgres(self) -> bool:
        """True when replicas may share the database."""
        return self.database_url.startswith("postgresql")


class _ArgumentParser(argparse.ArgumentParser):
    """Reports a bad command line as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True, kw_only=True, slots=True)
class _Option:
    flag: str
    help: str
    default: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return "APIKEYS_" + self.dest.upper()


OPTIONS: tuple[_Option, ...] = (
    _Option(flag="--listen", default=DEFAULT_LISTEN, help="host:port to serve gRPC on"),
    _Option(
        flag="--data-dir",
        default=DEFAULT_DATA_DIR,
        help="where the embedded database, development secrets and development admin keys live",
    ),
    _Option(
        flag="--database-url",
        help="sqlite+aiosqlite:///FILE or postgresql+asyncpg://... "
        "(default: SQLite in the data directory)",
    ),
    _Option(flag="--hmac-secret", help="base64, at least 32 bytes: the lookup-hash key (secret)"),
    _Option(
        flag="--encryption-keys",
        help="comma-separated id:base64 AES-256 keys; the first encrypts, all decrypt (secret)",
    ),
    _Option(flag="--admin-public-keys", help="PEM or JWKS file of the identity service's keys"),
    _Option(
        flag="--admin-audience",
        help="the aud claim admin tokens must carry (recommended; unchecked when unset)",
    ),
    _Option(
        flag="--admin-issuer", help="the iss claim admin tokens must carry (unchecked when unset)"
    ),
    _Option(flag="--routes", help="route table file replacing the packaged one"),
    _Option(
        flag="--cache-ttl",
        default=str(DEFAULT_CACHE_TTL),
        help="seconds a found key is answered from memory",
    ),
    _Option(flag="--cache-size", default=str(DEFAULT_CACHE_SIZE), help="most keys held in memory"),
    _Option(
        flag="--negative-cache-ttl",
        default=str(DEFAULT_NEGATIVE_CACHE_TTL),
        help="seconds an unknown key is remembered as unknown",
    ),
    _Option(
        flag="--negative-cache-size",
        default=str(DEFAULT_NEGATIVE_CACHE_SIZE),
        help="most unknown keys remembered",
    ),
    _Option(
        flag="--last-used-flush",
        default=str(DEFAULT_LAST_USED_FLUSH),
        help="seconds between writes of keys' last-used times",
    ),
    _Option(
        flag="--change-poll",
        default=str(DEFAULT_CHANGE_POLL),
        help="seconds between reads of the key change feed",
    ),
    _Option(
        flag="--shutdown-grace",
        default=str(DEFAULT_SHUTDOWN_GRACE),
        help="seconds in-flight calls get at shutdown",
    ),
    _Option(
        flag="--workers",
        default=str(DEFAULT_WORKERS),
        help="server processes sharing the listen port (SO_REUSEPORT), each with its own cache",
    ),
    _Option(
        flag="--uvloop",
        default="true",
        choices=("true", "false"),
        help="run on uvloop when it is installed",
    ),
    _Option(
        flag="--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="least severe level logged",
    ),
    _Option(
        flag="--log-format",
        default="json",
        choices=("json", "text"),
        help="json lines or plain text",
    ),
)


def _parser() -> _ArgumentParser:
    parser = _ArgumentParser(
        prog="apikeys-server",
        description="API-key authorization service. Every option may also be set as the "
        "APIKEYS_* variable named after it.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate", "health"),
        help="serve (default); migrate the database schema and exit; or ask the server "
        "at --listen for its health (exit 0 when serving)",
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.dest,
            default=None,
            choices=option.choices,
            metavar=option.env,
            help=f"{option.help} [env {option.env}]",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Parses flags and ``APIKEYS_*`` variables into ``Settings``.

    Raises ``SettingsError`` for a value the service cannot run with; exits
    with status 2 (through argparse) for an unknown flag.
    """
    environ = os.environ if environ is None else environ
    parsed = vars(_parser().parse_args(argv))
    raw: dict[str, str | None] = {}
    for option in OPTIONS:
        value = parsed[option.dest]
        if value is None:
            value = environ.get(option.env) or option.default
        if value is not None and option.choices and value not in option.choices:
            raise SettingsError(option.flag, f"must be one of {', '.join(option.choices)}")
        raw[option.dest] = value

    host, port = _listen(raw["listen"])
    data_dir = Path(raw["data_dir"] or DEFAULT_DATA_DIR)
    database_url = raw["database_url"] or f"sqlite+aiosqlite:///{data_dir / SQLITE_FILE}"
    _check_database_url(database_url)
    workers = int(_number(raw["workers"], "--workers", minimum=1, integer=True))
    if workers > 1 and port == 0:
        raise SettingsError("--workers", "more than one worker needs a fixed --listen port")

    return Settings(
        command=parsed["command"],
        listen_host=host,
        listen_port=port,
        data_dir=data_dir,
        database_url=database_url,
        hmac_secret=_optional(raw["hmac_secret"], "--hmac-secret", parse_hmac_secret),
        encryption_keys=_optional(
            raw["encryption_keys"],
            "--encryption-keys",
            lambda value: tuple(parse_encryption_keys(value)),
        ),
        admin_public_keys=_readable_file(raw["admin_public_keys"], "--admin-public-keys"),
        admin_audience=raw["admin_audience"] or None,
        admin_issuer=raw["admin_issuer"] or None,
        routes=_readable_file(raw["routes"], "--routes"),
        cache_ttl=_number(raw["cache_ttl"], "--cache-ttl", minimum=0.0),
        cache_size=int(_number(raw["cache_size"], "--cache-size", minimum=1, integer=True)),
        negative_cache_ttl=_number(raw["negative_cache_ttl"], "--negative-cache-ttl", minimum=0.0),
        negative_cache_size=int(
            _number(raw["negative_cache_size"], "--negative-cache-size", minimum=1, integer=True)
        ),
        last_used_flush=_number(raw["last_used_flush"], "--last-used-flush", minimum=0.01),
        change_poll=_number(raw["change_poll"], "--change-poll", minimum=0.01),
        shutdown_grace=_number(raw["shutdown_grace"], "--shutdown-grace", minimum=0.0),
        workers=workers,
        uvloop=raw["uvloop"] == "true",
        log_level=(raw["log_level"] or "info").upper(),
        log_format=raw["log_format"] or "json",
    )


def with_secrets(settings: Settings) -> Settings:
    """Settings with both secrets present.

    On PostgreSQL both must be supplied, since replicas that generated their
    own would not recognise each other's keys. On the embedded default missing
    ones are generated once into the data directory (mode 0600) and reused.
    """
    if settings.hmac_secret is not None and settings.encryption_keys is not None:
        return settings
    if settings.is_postgres:
        missing = "--hmac-secret" if settings.hmac_secret is None else "--encryption-keys"
        raise SettingsError(missing, "required with a PostgreSQL database: replicas must share it")
    ensure_data_dir(settings.data_dir)
    hmac_secret = settings.hmac_secret
    if hmac_secret is None:
        text = _generated_secret(
            settings.data_dir / HMAC_SECRET_FILE,
            lambda: base64.b64encode(secrets_module.token_bytes(32)).decode(),
        )
        hmac_secret = _optional(text, "--hmac-secret", parse_hmac_secret)
    encryption_keys = settings.encryption_keys
    if encryption_keys is None:
        text = _generated_secret(
            settings.data_dir / ENCRYPTION_KEYS_FILE,
            lambda: "dev1:" + base64.b64encode(secrets_module.token_bytes(32)).decode(),
        )
        encryption_keys = _optional(
            text, "--encryption-keys", lambda value: tuple(parse_encryption_keys(value))
        )
    return replace(settings, hmac_secret=hmac_secret, encryption_keys=encryption_keys)


def ensure_data_dir(path: Path) -> None:
    """Creates the data directory (mode 0700) or proves it is usable."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError("--data-dir", f"cannot create {path}: {exc.strerror}") from exc
    if not path.is_dir():
        raise SettingsError("--data-dir", f"{path} is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise SettingsError("--data-dir", f"{path} is not readable and writable")


def _generated_secret(path: Path, make: Callable[[], str]) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SettingsError("--data-dir", f"cannot read {path}: {exc.strerror}") from exc
    value = make()
    try:
        if not publish_new_file(path, (value + "\n").encode()):
            return path.read_text().strip()
    except OSError as exc:
        raise SettingsError("--data-dir", f"cannot write {path}: {exc.strerror}") from exc
    log.warning(
        "generated a development secret; production must supply its own",
        extra={"file": str(path)},
    )
    return value


def _listen(value: str | None) -> tuple[str, int]:
    value = value or DEFAULT_LISTEN
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise SettingsError("--listen", f"{value!r} is not host:port")
    if not port_text.isdigit():
        raise SettingsError("--listen", f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise SettingsError("--listen", f"port {port} is out of range 0-65535")
    return host, port


def _check_database_url(value: str) -> None:
    try:
        check_database_url(value)
    except ValueError as exc:
        raise SettingsError("--database-url", str(exc)) from None


def _number(
    value: str | None,
    option: str,
    *,
    minimum: float,
    maximum: float | None = None,
    integer: bool = False,
) -> float:
    try:
        number = int(value or "") if integer else float(value or "")
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise SettingsError(option, f"{value!r} is not {kind}") from None
    if number != number or number < minimum or (maximum is not None and number > maximum):
        upper = f" and at most {maximum:g}" if maximum is not None else ""
        raise SettingsError(option, f"must be at least {minimum:g}{upper}")
    return number


def _optional(value: str | None, option: str, parse: Callable[[str], T]) -> Secret[T] | None:
    if value is None:
        return None
    try:
        return Secret(parse(value))
    except ValueError as exc:
        raise SettingsError(option, str(exc)) from None


def _readable_file(value: str | None, option: str) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise SettingsError(option, f"{path} is not a readable file")
    return path
