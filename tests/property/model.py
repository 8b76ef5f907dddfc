"""A small reference model of ``Check``, written from the rules rather than
from the server's code, for the property suite to compare the server with.

It reads the packaged route table file itself and decides every check by
brute force: the path is judged by the RFC 3986 grammar and the aliasing
rules, and every route of the method is tried in turn.
"""

from __future__ import annotations

import string
import zlib
from dataclasses import dataclass
from importlib import resources

# What a check may be answered with; the names of the proto's Reason values.
ALLOWED = "REASON_ALLOWED"
KEY_MALFORMED = "REASON_KEY_MALFORMED"
KEY_NOT_FOUND = "REASON_KEY_NOT_FOUND"
SCOPE_MISSING = "REASON_SCOPE_MISSING"
ROUTE_NOT_FOUND = "REASON_ROUTE_NOT_FOUND"

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_PREFIX = "vsk_"
KEY_BODY = 43
KEY_CHECKSUM = 6
# Longer request targets are refused outright.
MAX_TARGET = 2048

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 pchar: unreserved, sub-delims, ":" and "@", plus "%" escapes. ";"
# is left out: servlet-style routers cut a segment there.
PCHAR = UNRESERVED | frozenset("!$&'()*+,=:@%")
# An escape is refused when a router could decode it into a separator, a
# second escape, a cut point or a control or non-ASCII byte, and when it
# spells a character that never needs escaping (the escaped and plain forms
# are one URI, so "%61" would alias "a").
REFUSED_ESCAPES = frozenset("/\\%;?#") | UNRESERVED


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    segments: tuple[str | None, ...]
    scopes: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


@dataclass(frozen=True)
class Key:
    id: str
    contact_center_id: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Expected:
    reason: str
    route: str = ""
    required_scopes: tuple[str, ...] = ()
    key: Key | None = None

    @property
    def allowed(self) -> bool:
        return self.reason == ALLOWED


def packaged_routes() -> tuple[Route, ...]:
    """The packaged route table, parsed here from its own file."""
    text = resources.files("server.domain").joinpath("data/routes.txt").read_text("utf-8")
    routes = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        method, template, scopes, _status = fields
        segments = tuple(
            None if part.startswith("{") and part.endswith("}") else part
            for part in template[1:].split("/")
        )
        routes.append(Route(method, template, segments, tuple(scopes.split(","))))
    return tuple(routes)


def checksum(body: str) -> str:
    """The six base62 digits of the CRC32 of ``body``, most significant first."""
    value = zlib.crc32(body.encode())
    digits = ""
    for _ in range(KEY_CHECKSUM):
        value, digit = divmod(value, 62)
        digits = BASE62[digit] + digits
    return digits


def well_formed(key: str) -> bool:
    """``vsk_``, 43 base62 digits and their checksum."""
    body = key[: len(KEY_PREFIX) + KEY_BODY]
    return (
        len(key) == len(KEY_PREFIX) + KEY_BODY + KEY_CHECKSUM
        and key.startswith(KEY_PREFIX)
        and all(char in BASE62 for char in key[len(KEY_PREFIX) :])
        and key.endswith(checksum(body))
    )


def granted(scopes: frozenset[str]) -> frozenset[str]:
    """A ``*.manage`` scope grants the matching ``*.read`` too."""
    return scopes | {s.removesuffix(".manage") + ".read" for s in scopes if s.endswith(".manage")}


def canonical_segments(path: str) -> list[str] | None:
    """The path's segments, or ``None`` when a router could read it as
    another path."""
    if len(path) > MAX_TARGET:
        return None
    path, _, query = path.partition("?")
    # The query is ignored, if an HTTP request line could carry it.
    if any(not ("!" <= char <= "~") or char == "#" for char in query):
        return None
    if not path.startswith("/"):
        return None
    segments = path[1:].split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            return None
        if any(char not in PCHAR for char in segment):
            return None
        for at, char in enumerate(segment):
            if char != "%":
                continue
            escape = segment[at + 1 : at + 3]
            if len(escape) != 2 or any(c not in string.hexdigits for c in escape):
                return None
            byte = int(escape, 16)
            if not 0x20 <= byte < 0x7F or chr(byte) in REFUSED_ESCAPES:
                return None
    return segments


def find_route(routes: tuple[Route, ...], method: str, path: str) -> Route | None:
    """The route for the request: ``HEAD`` follows ``GET``, methods are
    case-sensitive, ``{param}`` is one non-empty segment, and where a
    literal and a parameter could both match, the literal wins."""
    segments = canonical_segments(path)
    if segments is None:
        return None
    wanted = "GET" if method == "HEAD" else method
    candidates = [
        route
        for route in routes
        if route.method == wanted
        and len(route.segments) == len(segments)
        and all(
            part is None or part == got for part, got in zip(route.segments, segments, strict=True)
        )
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda route: [part is None for part in route.segments])


def expect(
    routes: tuple[Route, ...], keys: dict[str, Key], key: str, method: str, path: str
) -> Expected:
    """What ``Check`` must answer, in the order malformed, route not found,
    key not found, scope missing. ``keys`` maps live secrets to their keys."""
    if not well_formed(key):
        return Expected(KEY_MALFORMED)
    route = find_route(routes, method, path)
    if route is None:
        return Expected(ROUTE_NOT_FOUND)
    found = keys.get(key)
    if found is None:
        return Expected(KEY_NOT_FOUND, route.name, route.scopes)
    reason = ALLOWED if granted(found.scopes) & set(route.scopes) else SCOPE_MISSING
    return Expected(reason, route.name, route.scopes, found)
