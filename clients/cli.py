"""``apikeys``: the admin and caller command line of the API-key service.

Each command is one ``_add_*`` function in :data:`COMMANDS` that adds its
parser and sets its handler; a handler takes the parsed arguments and returns
the exit status. Failed calls end as one line on stderr,
``apikeys: <what> (<gRPC code>)``, and exit status 1; usage errors exit 2.
The admin token is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from clients import _loadtest_cli
from clients._authorize import AuthorizeClient, Decision
from clients._caching import CachingAuthorizeClient
from clients._channel import DEFAULT_TARGET, SERVER_ENV, ChannelOptions
from clients._exceptions import (
    ApiKeysError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from clients._key_admin import DEFAULT_ADMIN_TIMEOUT, KeyAdminClient
from clients._loadtest import PlanError, format_table
from clients.devtoken import DEFAULT_DEV_TOKEN_TTL_SECONDS, dev_signing_key_path, mint_dev_token
from voiso.apikeys.v1 import api_key_pb2

PROG: Final = "apikeys"
TOKEN_ENV: Final = "APIKEYS_TOKEN"  # noqa: S105 - the variable's name, not a token
DATA_DIR_ENV: Final = "APIKEYS_DATA_DIR"
DEFAULT_DATA_DIR: Final = "./var"

# An expiry or overlap given as a length of time: "90s", "15m", "12h", "30d".
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
NEVER: Final = "never"

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """The command line asks for something impossible; exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one ``apikeys`` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except UsageError as exc:
        _complain(str(exc))
        return 2
    except ApiKeysError as exc:
        _complain(f"{_describe(exc, args)} ({exc.code.name})")
        return 1
    except BrokenPipeError:
        # The reader went away (`apikeys keys list | head`): stop quietly, and keep
        # the interpreter's final flush from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, ValueError) as exc:
        _complain(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, with the global options before or after the command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Manage API keys and check what a key may call."
    )
    _add_global_options(parser, on_command=False)
    global_options = argparse.ArgumentParser(add_help=False)
    _add_global_options(global_options, on_command=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(commands, global_options)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, on_command: bool) -> None:
    def default_of(value: object) -> object:
        # Repeated on each command, an option without a default of its own
        # keeps what was given before the command name.
        return argparse.SUPPRESS if on_command else value

    group = parser.add_argument_group("common options")
    group.add_argument(
        "--server",
        default=default_of(None),
        help=f"host:port of the service (env {SERVER_ENV}, default {DEFAULT_TARGET})",
    )
    group.add_argument("--token", default=default_of(None), help=f"admin token (env {TOKEN_ENV})")
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=default_of(None),
        metavar="SECONDS",
        help=f"deadline of each call, retries included (default {DEFAULT_ADMIN_TIMEOUT:g})",
    )
    group.add_argument("--json", action="store_true", default=default_of(False), help="print JSON")
    group.add_argument(
        "--tls", action="store_true", default=default_of(False), help="connect with TLS"
    )
    group.add_argument(
        "--ca-cert",
        type=Path,
        default=default_of(None),
        metavar="PEM",
        help="root certificates to trust instead of the system's (implies --tls)",
    )
    group.add_argument(
        "--client-cert",
        type=Path,
        default=default_of(None),
        metavar="PEM",
        help="client certificate chain for mutual TLS (implies --tls)",
    )
    group.add_argument(
        "--client-key",
        type=Path,
        default=default_of(None),
        metavar="PEM",
        help="private key of --client-cert",
    )
    group.add_argument(
        "--tls-server-name",
        default=default_of(None),
        metavar="NAME",
        help="name to check the server certificate against (implies --tls)",
    )


def _command(
    commands: Commands, global_options: argparse.ArgumentParser, name: str, *, summary: str
) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=summary, parents=[global_options])


def _add_keys_commands(commands: Commands, global_options: argparse.ArgumentParser) -> None:
    keys = commands.add_parser(
        "keys", help="create, list, change and delete API keys", parents=[global_options]
    )
    actions = keys.add_subparsers(title="actions", metavar="ACTION", required=True)

    create = _command(actions, global_options, "create", summary="create a key; prints its secret")
    create.add_argument("--name", required=True)
    create.add_argument("--description", default="")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        metavar="SCOPE",
        help="a scope the key grants; repeat for more",
    )
    create.add_argument(
        "--expires",
        type=_expiry,
        metavar="WHEN",
        help='when the key stops working: a time ("2027-01-31T00:00:00Z") or a length '
        'of time from now ("30d", "12h")',
    )
    create.add_argument(
        "--allow-cidr",
        dest="allowed_cidrs",
        action="append",
        default=[],
        metavar="CIDR",
        help="a network the key may be used from (e.g. 203.0.113.0/24); repeat for more; "
        "none: any address",
    )
    create.set_defaults(handler=_keys_create)

    listing = _command(actions, global_options, "list", summary="list keys, newest first")
    listing.add_argument("--query", default="", help="substring of the name or description")
    listing.add_argument("--page-size", type=int, default=0, metavar="N")
    listing.add_argument("--page-token", default="", metavar="TOKEN")
    listing.add_argument("--all", action="store_true", help="every page")
    listing.set_defaults(handler=_keys_list)

    get = _command(actions, global_options, "get", summary="show one key")
    get.add_argument("key_id", metavar="ID")
    get.set_defaults(handler=_keys_get)

    update = _command(actions, global_options, "update", summary="rename, re-describe or re-scope")
    update.add_argument("key_id", metavar="ID")
    update.add_argument("--name")
    update.add_argument("--description")
    update.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        metavar="SCOPE",
        help="the key's new scopes, replacing the old ones; repeat for more",
    )
    update.add_argument(
        "--expires",
        type=_expiry_or_never,
        metavar="WHEN",
        help=f'a new expiry (as for create), or "{NEVER}" to remove it',
    )
    addresses = update.add_mutually_exclusive_group()
    addresses.add_argument(
        "--allow-cidr",
        dest="allowed_cidrs",
        action="append",
        metavar="CIDR",
        help="the networks the key may be used from, replacing the old ones; repeat for more",
    )
    addresses.add_argument(
        "--any-address",
        action="store_true",
        help="remove the key's networks: usable from any address",
    )
    update.set_defaults(handler=_keys_update)

    disable = _command(actions, global_options, "disable", summary="pause a key; kept, refused")
    disable.add_argument("key_id", metavar="ID")
    disable.set_defaults(handler=_keys_disable)

    enable = _command(actions, global_options, "enable", summary="resume a disabled key")
    enable.add_argument("key_id", metavar="ID")
    enable.set_defaults(handler=_keys_enable)

    roll = _command(
        actions,
        global_options,
        "roll",
        summary="give a key a new secret; prints it; the old one works for the overlap",
    )
    roll.add_argument("key_id", metavar="ID")
    roll.add_argument(
        "--overlap",
        type=_duration,
        required=True,
        metavar="LENGTH",
        help='how long the old secret keeps working: "0s" (not at all) to "7d"',
    )
    roll.set_defaults(handler=_keys_roll)

    delete = _command(actions, global_options, "delete", summary="delete (revoke) a key at once")
    delete.add_argument("key_id", metavar="ID")
    delete.set_defaults(handler=_keys_delete)

    reveal = _command(actions, global_options, "reveal", summary="print a key's secret (audited)")
    reveal.add_argument("key_id", metavar="ID")
    reveal.set_defaults(handler=_keys_reveal)


def _add_scopes_command(commands: Commands, global_options: argparse.ArgumentParser) -> None:
    scopes = _command(commands, global_options, "scopes", summary="list the scope catalog")
    scopes.set_defaults(handler=_scopes)


def _add_audit_command(commands: Commands, global_options: argparse.ArgumentParser) -> None:
    audit = _command(commands, global_options, "audit", summary="list audit events, newest first")
    audit.add_argument("--key-id", default="", metavar="ID", help="only this key's events")
    audit.add_argument("--page-size", type=int, default=0, metavar="N")
    audit.add_argument("--page-token", default="", metavar="TOKEN")
    audit.add_argument("--all", action="store_true", help="every page")
    audit.set_defaults(handler=_audit)


def _add_check_command(commands: Commands, global_options: argparse.ArgumentParser) -> None:
    check = _command(
        commands,
        global_options,
        "check",
        summary="ask whether a key may call a method and path; exit 0 if allowed, 1 if denied",
    )
    check.add_argument(
        "key", metavar="KEY", help='the API key or "Bearer <key>"; - reads it from stdin'
    )
    check.add_argument("method", metavar="METHOD", help="HTTP method, e.g. GET")
    check.add_argument("path", metavar="PATH", help="request path, e.g. /api/v4/campaigns")
    check.add_argument(
        "--client-ip", default="", metavar="ADDRESS", help="the caller's IPv4 or IPv6 address"
    )
    check.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="ask N times and show the last answer (default 1)",
    )
    check.add_argument(
        "--cache",
        action="store_true",
        help="ask through the caching client, which answers repeats from memory while the "
        "server streams its changes; shows how many answers came from memory",
    )
    check.set_defaults(handler=_check)


def _add_dev_token_command(commands: Commands, global_options: argparse.ArgumentParser) -> None:
    dev_token = _command(
        commands,
        global_options,
        "dev-token",
        summary="print an admin token signed with a development server's key pair",
    )
    dev_token.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"the server's data directory (env {DATA_DIR_ENV}, default {DEFAULT_DATA_DIR})",
    )
    dev_token.add_argument("--subject", default="dev-admin", help="the sub claim")
    dev_token.add_argument("--contact-center", default="cc-dev", metavar="ID")
    dev_token.add_argument("--role", default="admin")
    dev_token.add_argument(
        "--permission",
        dest="permissions",
        action="append",
        default=[],
        metavar="P",
        help="e.g. api_keys.view; repeat for more (they count only with --sag)",
    )
    dev_token.add_argument("--sag", action="store_true", help="Security Access Groups on")
    dev_token.add_argument(
        "--ttl", type=int, default=DEFAULT_DEV_TOKEN_TTL_SECONDS, metavar="SECONDS"
    )
    dev_token.set_defaults(handler=_dev_token)


def _add_loadtest(commands: Commands, global_options: argparse.ArgumentParser) -> None:
    loadtest = _command(
        commands,
        global_options,
        "loadtest",
        summary="send many concurrent checks and report throughput, latency and answers",
    )
    _loadtest_cli.add_arguments(loadtest)

    def handler(args: argparse.Namespace) -> int:
        token = args.token or os.environ.get(TOKEN_ENV)
        if not token and not args.keys:
            raise UsageError(f"loadtest: give --key, or an admin token (--token or {TOKEN_ENV})")
        try:
            result = asyncio.run(_loadtest_cli.run_command(args, _channel_options(args), token))
        except PlanError as exc:
            raise UsageError(f"loadtest: {exc}") from exc
        if args.json:
            _print_json(result.as_dict())
        else:
            print(format_table(result))
        return 0

    loadtest.set_defaults(handler=handler)


COMMANDS: Final[tuple[Callable[[Commands, argparse.ArgumentParser], None], ...]] = (
    _add_keys_commands,
    _add_scopes_command,
    _add_audit_command,
    _add_check_command,
    _add_dev_token_command,
    _add_loadtest,
)
"""Adds each top-level command; a new command is one more function here."""


def _keys_create(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        key, secret = admin.create_key(
            args.name,
            args.description,
            args.scopes,
            expire_time=args.expires,
            allowed_cidrs=args.allowed_cidrs,
        )
    if args.json:
        _print_json({"key": _message_dict(key), "secret": secret})
        return 0
    print(f"Created key {key.id} ({key.name}) with scopes {', '.join(key.scopes)}.")
    print("Its secret is shown only now; store it safely:")
    print()
    print(f"    {secret}")
    print()
    print(f"Admins with api_keys.view can show it again: {PROG} keys reveal {key.id}")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        if args.all:
            keys = list(admin.iter_keys(args.query, args.page_size))
            next_page_token, total_size = "", len(keys)
        else:
            page = admin.list_keys(args.query, args.page_size, args.page_token)
            keys, next_page_token, total_size = (
                list(page.keys),
                page.next_page_token,
                page.total_size,
            )
    if args.json:
        document: dict[str, Any] = {"keys": [_message_dict(key) for key in keys]}
        document["total_size"] = total_size
        if next_page_token:
            document["next_page_token"] = next_page_token
        _print_json(document)
        return 0
    _print_table(
        ["ID", "NAME", "KEY", "STATE", "SCOPES", "CREATED", "LAST USED"],
        (
            [
                key.id,
                key.name,
                key.masked_key,
                _state(key),
                ",".join(key.scopes),
                _time(key.create_time),
                _time(key.last_used_time) if key.HasField("last_used_time") else "never",
            ]
            for key in keys
        ),
    )
    if next_page_token:
        print(
            f"{len(keys)} of {total_size} keys; next page: --page-token {next_page_token}",
            file=sys.stderr,
        )
    return 0


def _keys_get(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        key = admin.get_key(args.key_id)
    _print_key(key, args)
    return 0


def _keys_update(args: argparse.Namespace) -> int:
    allowed_cidrs = [] if args.any_address else args.allowed_cidrs
    changes = (args.name, args.description, args.scopes, args.expires, allowed_cidrs)
    if all(change is None for change in changes):
        raise UsageError(
            "keys update: give --name, --description, --scope, --expires, --allow-cidr "
            "or --any-address"
        )
    with _admin_client(args) as admin:
        key = admin.update_key(
            args.key_id,
            name=args.name,
            description=args.description,
            scopes=args.scopes,
            expire_time=None if args.expires == NEVER else args.expires,
            clear_expire_time=args.expires == NEVER,
            allowed_cidrs=allowed_cidrs,
        )
    _print_key(key, args)
    return 0


def _keys_disable(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        key = admin.disable_key(args.key_id)
    _print_key(key, args)
    return 0


def _keys_enable(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        key = admin.enable_key(args.key_id)
    _print_key(key, args)
    return 0


def _keys_roll(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        key, secret = admin.roll_key(args.key_id, overlap=args.overlap)
    if args.json:
        _print_json({"key": _message_dict(key), "secret": secret})
        return 0
    if args.overlap:
        print(f"Rolled key {key.id} ({key.name}); its old secret works for {args.overlap} more.")
    else:
        print(f"Rolled key {key.id} ({key.name}); its old secret no longer works.")
    print("The new secret is shown only now; store it safely:")
    print()
    print(f"    {secret}")
    print()
    return 0


def _keys_delete(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        admin.delete_key(args.key_id)
    if args.json:
        _print_json({"id": args.key_id, "deleted": True})
    else:
        print(f"Deleted key {args.key_id}; it no longer authorizes any request.")
    return 0


def _keys_reveal(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        secret = admin.reveal_key(args.key_id)
    if args.json:
        _print_json({"id": args.key_id, "secret": secret})
    else:
        print(secret)
    return 0


def _scopes(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        scopes = admin.list_scopes()
    if args.json:
        _print_json({"scopes": [_message_dict(scope) for scope in scopes]})
    else:
        _print_table(
            ["NAME", "DOMAIN", "DESCRIPTION"],
            ([scope.name, scope.domain, scope.description] for scope in scopes),
        )
    return 0


def _audit(args: argparse.Namespace) -> int:
    with _admin_client(args) as admin:
        if args.all:
            events = list(admin.iter_audit_events(args.key_id, args.page_size))
            next_page_token = ""
        else:
            page = admin.list_audit_events(args.key_id, args.page_size, args.page_token)
            events, next_page_token = list(page.events), page.next_page_token
    if args.json:
        document: dict[str, Any] = {"events": [_message_dict(event) for event in events]}
        if next_page_token:
            document["next_page_token"] = next_page_token
        _print_json(document)
        return 0
    _print_table(
        ["TIME", "ACTION", "KEY", "ACTOR", "CHANGES"],
        (
            [
                _time(event.time),
                api_key_pb2.AuditAction.Name(event.action).removeprefix("AUDIT_ACTION_").lower(),
                event.key_id,
                event.actor_id,
                _changes(event),
            ]
            for event in events
        ),
    )
    if next_page_token:
        print(f"next page: --page-token {next_page_token}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    options = _channel_options(args)
    from_memory: int | None = None
    if args.cache:
        with CachingAuthorizeClient(options) as caching:
            # Nothing is kept until the stream has spoken; a server that does
            # not stream is still asked every time, only after this wait.
            caching.wait_fresh(options.timeout or DEFAULT_ADMIN_TIMEOUT)
            for _ in range(args.repeat):
                decision = caching.check(key, args.method, args.path, client_ip=args.client_ip)
            from_memory = caching.hits
    else:
        with AuthorizeClient(options) as authorize:
            for _ in range(args.repeat):
                decision = authorize.check(key, args.method, args.path, client_ip=args.client_ip)
    if args.json:
        document = _decision_dict(decision)
        if from_memory is not None:
            document |= {"checks": args.repeat, "from_memory": from_memory}
        _print_json(document)
    else:
        memory = [] if from_memory is None else [("from memory", f"{from_memory} of {args.repeat}")]
        _print_fields(
            [
                ("allowed", "yes" if decision.allowed else "no"),
                ("reason", decision.reason.value),
                ("route", decision.route or "-"),
                ("key id", decision.key_id or "-"),
                ("contact center", decision.contact_center_id or "-"),
                ("granted scopes", ", ".join(decision.granted_scopes) or "-"),
                ("required scopes", ", ".join(decision.required_scopes) or "-"),
                *memory,
            ]
        )
    return 0 if decision.allowed else 1


def _dev_token(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    signing_key = dev_signing_key_path(data_dir)
    if not signing_key.is_file():
        raise FileNotFoundError(
            f"no development signing key at {signing_key}; start apikeys-server with this "
            "data directory and without APIKEYS_ADMIN_PUBLIC_KEYS once to create it"
        )
    print(
        mint_dev_token(
            signing_key,
            subject=args.subject,
            contact_center_id=args.contact_center,
            role=args.role,
            permissions=args.permissions,
            sag=args.sag,
            ttl_seconds=args.ttl,
        )
    )
    return 0


def _channel_options(args: argparse.Namespace) -> ChannelOptions:
    tls_files = (args.ca_cert, args.client_cert, args.client_key, args.tls_server_name)
    try:
        return ChannelOptions(
            target=args.server or os.environ.get(SERVER_ENV) or DEFAULT_TARGET,
            tls=args.tls or any(value is not None for value in tls_files),
            root_certificates=args.ca_cert,
            client_certificate=args.client_cert,
            client_key=args.client_key,
            tls_server_name=args.tls_server_name,
            # A person is waiting, and the first call also sets up the connection.
            timeout=args.timeout or DEFAULT_ADMIN_TIMEOUT,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _admin_client(args: argparse.Namespace) -> KeyAdminClient:
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise UsageError(
            f"no admin token: pass --token or set {TOKEN_ENV} "
            f"(for a development server: export {TOKEN_ENV}=$({PROG} dev-token))"
        )
    return KeyAdminClient(_channel_options(args), token=token)


def _describe(exc: ApiKeysError, args: argparse.Namespace) -> str:
    if isinstance(exc, InvalidArgument) and exc.field_violations:
        return "invalid request: " + "; ".join(
            f"{field}: {description}" for field, description in exc.field_violations
        )
    if isinstance(exc, ResourceExhausted) and exc.quota_violations:
        return "; ".join(description for _, description in exc.quota_violations)
    target = args.server or os.environ.get(SERVER_ENV) or DEFAULT_TARGET
    if isinstance(exc, Unavailable):
        return f"service at {target} unavailable: {exc.details}"
    if isinstance(exc, DeadlineExceeded):
        return f"no answer from {target} in time"
    if isinstance(exc, Unauthenticated):
        return f"admin token refused: {exc.details}"
    return exc.details


def _complain(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _decision_dict(decision: Decision) -> dict[str, Any]:
    document = dataclasses.asdict(decision)
    document["reason"] = decision.reason.value
    document["granted_scopes"] = list(decision.granted_scopes)
    document["required_scopes"] = list(decision.required_scopes)
    return document


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _print_key(key: api_key_pb2.ApiKey, args: argparse.Namespace) -> None:
    if args.json:
        _print_json(_message_dict(key))
        return
    _print_fields(
        [
            ("id", key.id),
            ("name", key.name),
            ("description", key.description or "-"),
            ("scopes", ", ".join(key.scopes)),
            ("key", key.masked_key),
            ("state", _state(key)),
            ("expires", _time(key.expire_time) if key.HasField("expire_time") else "never"),
            ("allowed from", ", ".join(key.allowed_cidrs) or "any address"),
            ("created", f"{_time(key.create_time)} by {key.created_by or '-'}"),
            ("updated", _time(key.update_time)),
            (
                "last used",
                _time(key.last_used_time) if key.HasField("last_used_time") else "never",
            ),
        ]
    )


def _print_fields(fields: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        print(f"{label.ljust(width)}  {value}")


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    table = [list(headers), *([_single_line(cell) for cell in row] for row in rows)]
    widths = [max(len(row[column]) for row in table) for column in range(len(headers))]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]))


def _single_line(text: str) -> str:
    # A description with a newline or tab would break the table's alignment.
    return " ".join(text.split())


def _time(timestamp: Timestamp) -> str:
    moment = timestamp.ToDatetime(tzinfo=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _state(key: api_key_pb2.ApiKey) -> str:
    return api_key_pb2.ApiKey.State.Name(key.state).removeprefix("STATE_").lower()


def _changes(event: api_key_pb2.AuditEvent) -> str:
    changes = []
    for field, old, new in (
        ("name", event.old_name, event.new_name),
        ("description", event.old_description, event.new_description),
        ("scopes", ",".join(event.old_scopes), ",".join(event.new_scopes)),
        (
            "expires",
            _optional_time(event, "old_expire_time"),
            _optional_time(event, "new_expire_time"),
        ),
        ("allowed from", ",".join(event.old_allowed_cidrs), ",".join(event.new_allowed_cidrs)),
    ):
        if old != new:
            changes.append(f"{field}: {old or '-'} -> {new or '-'}")
    if event.HasField("previous_secret_expire_time"):
        changes.append(f"old secret works until {_time(event.previous_secret_expire_time)}")
    return "; ".join(changes)


def _optional_time(message: Message, field: str) -> str:
    return _time(getattr(message, field)) if message.HasField(field) else ""


def _duration(text: str) -> datetime.timedelta:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError('a length of time such as "90s", "15m", "12h" or "30d"')
    return datetime.timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def _expiry(text: str) -> datetime.datetime:
    if _DURATION.fullmatch(text.strip()):
        return datetime.datetime.now(datetime.UTC) + _duration(text)
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            'a time such as "2027-01-31T00:00:00Z" or a length of time such as "30d"'
        ) from None
    # A time without a zone is UTC, as every time this command prints.
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=datetime.UTC)


def _expiry_or_never(text: str) -> datetime.datetime | str:
    return NEVER if text.strip() == NEVER else _expiry(text)


if __name__ == "__main__":
    sys.exit(main())
