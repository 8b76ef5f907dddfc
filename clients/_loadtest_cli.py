"""The options of ``apikeys loadtest`` and the run they ask for.

``add_arguments`` adds the options to the command's parser; ``run_command``
turns the parsed options into a :class:`~clients._loadtest.LoadPlan`, creates
the keys it needs with the admin token, sends the load and deletes those keys
again.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from clients._channel import ChannelOptions
from clients._keys import well_formed_key
from clients._loadtest import (
    DEFAULT_CALL_TIMEOUT,
    DEFAULT_DURATION,
    DEFAULT_MIX,
    DEFAULT_ROUTES,
    KINDS,
    MALFORMED_KEYS,
    LoadPlan,
    LoadResult,
    PlanError,
    PreparedKeys,
    Route,
    delete_keys,
    prepare_keys,
    run_load,
)

__all__ = ["add_arguments", "progress_stream", "run_command"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``apikeys loadtest``."""
    parser.add_argument(
        "--concurrency", type=_positive_int, default=50, metavar="N", help="calls in flight"
    )
    parser.add_argument(
        "--connections", type=_positive_int, default=1, metavar="N", help="HTTP/2 connections"
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help=f"how long to send (default {DEFAULT_DURATION:g})",
    )
    amount.add_argument("--requests", type=_positive_int, metavar="N", help="how many to send")
    parser.add_argument(
        "--key",
        dest="keys",
        action="append",
        default=[],
        metavar="KEY",
        help="a key to send, of kind 'given'; repeat for more",
    )
    parser.add_argument(
        "--valid-keys",
        type=_count,
        default=2,
        metavar="N",
        help="keys to create with the admin token, deleted afterwards (default 2)",
    )
    parser.add_argument(
        "--revoked-keys",
        type=_count,
        default=1,
        metavar="N",
        help="keys to create and delete at once with the admin token (default 1)",
    )
    parser.add_argument(
        "--unknown-keys",
        type=_count,
        default=100,
        metavar="N",
        help="distinct well-formed keys that no server issued (default 100)",
    )
    parser.add_argument(
        "--mix",
        type=_mix,
        default={},
        metavar="KIND=WEIGHT,...",
        help="relative weights of "
        + ", ".join(KINDS)
        + " keys (default "
        + ",".join(f"{kind}={weight}" for kind, weight in DEFAULT_MIX.items())
        + ")",
    )
    parser.add_argument(
        "--route",
        dest="routes",
        action="append",
        type=_route,
        default=[],
        metavar='"METHOD PATH"',
        help="a route to check; repeat for more (default: "
        + "; ".join(f"{method} {path}" for method, path in DEFAULT_ROUTES)
        + ")",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="check through caching clients (one per connection) that answer repeated "
        "checks from memory while the server streams its changes; reports how many did",
    )


async def run_command(
    args: argparse.Namespace, options: ChannelOptions, token: str | None
) -> LoadResult:
    """Runs ``apikeys loadtest``: creates its keys when given a token, sends
    the load, deletes the keys it created."""
    if args.duration is not None and args.duration <= 0:
        raise PlanError("--duration must be positive")
    prepared = PreparedKeys()
    if token:
        prepared = await prepare_keys(
            options, token, valid=args.valid_keys, revoked=args.revoked_keys
        )
    try:
        plan = LoadPlan(
            keys={
                "valid": prepared.valid,
                "revoked": prepared.revoked,
                "unknown": tuple(well_formed_key() for _ in range(args.unknown_keys)),
                "malformed": MALFORMED_KEYS,
                "given": tuple(args.keys),
            },
            mix=args.mix or DEFAULT_MIX,
            routes=tuple(args.routes) or DEFAULT_ROUTES,
            concurrency=args.concurrency,
            connections=args.connections,
            duration=None if args.requests else (args.duration or DEFAULT_DURATION),
            requests=args.requests,
            timeout=args.timeout or DEFAULT_CALL_TIMEOUT,
            cache=args.cache,
        )
        return await run_load(plan, options, progress=progress_stream())
    finally:
        if prepared.valid_ids and token:
            await delete_keys(options, token, prepared.valid_ids)


def _positive_int(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must not be negative")
    return value


def _mix(text: str) -> dict[str, int]:
    mix: dict[str, int] = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        kind = kind.strip()
        if kind not in KINDS or not weight.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected KIND=WEIGHT with KIND one of {', '.join(KINDS)}"
            )
        mix[kind] = int(weight)
    return mix


def _route(text: str) -> Route:
    method, _, path = text.strip().partition(" ")
    if not method or not path.strip():
        raise argparse.ArgumentTypeError(f'{text!r}: expected "METHOD PATH"')
    return Route(method, path.strip())


def progress_stream() -> TextIO | None:
    """stderr when it is a terminal, else ``None`` (no bar in logs and pipes)."""
    return sys.stderr if sys.stderr.isatty() else None
