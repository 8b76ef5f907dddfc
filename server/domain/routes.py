"""The route table: which scopes allow which v4 method and path (docs/API.md,
"Route table").

The table is a line-oriented text file (the packaged default is
``data/routes.txt``, whose header describes the format), so every load error
names its file and line. It is compiled into one segment trie per method:
matching walks the path's segments, so its cost depends on the path's depth,
not on how many routes there are.

A path is matched only in canonical form. Anything a downstream router could
read as a different path (dot segments, empty segments, encoded ``/`` or
``\\``, double encoding, control or non-ASCII characters, a fragment, ...)
matches nothing, so it is denied rather than checked against the wrong route.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

MAX_PATH_LENGTH = 2048
MEMO_SIZE = 8192
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
DEFAULT_ROUTES_RESOURCE = "data/routes.txt"

_STATUSES = {"confirmed": True, "unconfirmed": False}
_FIELDS = 4

# RFC 3986 pchar (unreserved, sub-delims, ":", "@", pct-encoded) without ";":
# servlet-style routers cut a segment at ";" (a path parameter), so they
# would route "/a/b;x" as "/a/b" while here it is a different segment.
_SEGMENT_CHARS = r"[A-Za-z0-9\-._~!$&'()*+,=:@%]"
_PATH = re.compile(rf"(?:/{_SEGMENT_CHARS}+)+")
_SEGMENT = re.compile(rf"{_SEGMENT_CHARS}+")
# The query is ignored, but only if it is something an HTTP request line
# could carry: visible ASCII and no fragment.
_QUERY = re.compile(r"[!-\"$-~]*")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Escapes a router might decode into a different path are refused: "/" and
# "\" (separators), "%" (double encoding), ";", "?" and "#" (a router or
# proxy that decodes before splitting would cut the path there), control and
# non-ASCII bytes, and
# unreserved characters, whose escaped and plain forms are the same URI (so
# "te%61ms" is "teams", not a parameter value). Lowercase hex is compared
# upper-cased.
_ALLOWED_ESCAPES = frozenset(
    f"{byte:02X}"
    for byte in range(0x20, 0x7F)
    if chr(byte) not in _UNRESERVED and chr(byte) not in "/\\%;?#"
)
_DOT_SEGMENTS = (".", "..")


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteMatch:
    """A route of the table: ``route`` is ``"METHOD /template"``; any one
    of ``required_scopes`` allows it. ``confirmed`` is false while the route
    is not yet checked against the public v4 reference."""

    route: str
    required_scopes: tuple[str, ...]
    confirmed: bool = True


class RouteFileError(ValueError):
    """A route table that cannot be used. ``line`` is 1-based, or 0 when the
    problem is the file as a whole."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}")


class _Node:
    __slots__ = ("literals", "param", "route")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.route: RouteMatch | None = None


@dataclass(kw_only=True, slots=True)
class _Trie:
    root: _Node
    depth: int = 0


class RouteTable:
    """The compiled route table. Build it with ``load`` or ``from_text``."""

    __slots__ = ("_memo", "_routes", "_tries")

    def __init__(self, routes: tuple[RouteMatch, ...], tries: dict[str, _Trie]) -> None:
        self._routes = routes
        self._tries = tries
        # The table never changes, so an answer can be remembered; hot
        # endpoints repeat the same method and path over and over.
        self._memo: dict[tuple[str, str], RouteMatch | None] = {}

    @property
    def remembered(self) -> int:
        """How many requests' answers the table holds in memory."""
        return len(self._memo)

    @classmethod
    def load(cls, path: Path | None = None, *, known_scopes: Collection[str]) -> RouteTable:
        """Loads the table from ``path``, or the packaged default when
        ``None``. Raises ``RouteFileError`` if it cannot be read or used."""
        source = (
            resources.files("server.domain").joinpath(DEFAULT_ROUTES_RESOURCE)
            if path is None
            else path
        )
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise RouteFileError(str(source), 0, f"cannot read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise RouteFileError(str(source), 0, f"not UTF-8 text: {exc.reason}") from exc
        return cls.from_text(text, source=str(source), known_scopes=known_scopes)

    @classmethod
    def from_text(
        cls, text: str, *, source: str = "<routes>", known_scopes: Collection[str]
    ) -> RouteTable:
        """Compiles the table from the text of a route file; ``source``
        names it in errors. Raises ``RouteFileError``."""
        builder = _Builder(source, frozenset(known_scopes))
        for number, line in enumerate(text.split("\n"), start=1):
            fields = line.split()
            if fields and not fields[0].startswith("#"):
                builder.add(number, fields)
        if not builder.routes:
            raise RouteFileError(source, 0, "the table has no routes")
        return cls(tuple(builder.routes), builder.tries)

    @property
    def routes(self) -> tuple[RouteMatch, ...]:
        """Every route, in the order of the file."""
        return self._routes

    def __len__(self) -> int:
        return len(self._routes)

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The route for an HTTP method and request path, or ``None`` if
        none matches or the path is not canonical.

        ``HEAD`` follows ``GET``; methods are case-sensitive; the query
        string is ignored.
        """
        # Only requests that could match are remembered, so the memo holds at
        # most MEMO_SIZE short entries whatever a caller sends.
        if (
            len(path) > MAX_PATH_LENGTH
            or ("GET" if method == "HEAD" else method) not in self._tries
        ):
            return None
        request = (method, path)
        try:
            return self._memo[request]
        except KeyError:
            pass
        found = self._match(method, path)
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[request] = found
        return found

    def _match(self, method: str, path: str) -> RouteMatch | None:
        trie = self._tries.get("GET" if method == "HEAD" else method)
        if trie is None:
            return None
        path, _, query = path.partition("?")
        if query and _QUERY.fullmatch(query) is None:
            return None
        if _PATH.fullmatch(path) is None:
            return None
        if "%" in path and not _escapes_allowed(path):
            return None
        segments = path[1:].split("/")
        if len(segments) > trie.depth:
            return None
        if "/." in path and any(segment in _DOT_SEGMENTS for segment in segments):
            return None
        return _walk(trie.root, segments, 0)


def _escapes_allowed(text: str) -> bool:
    start = text.find("%")
    while start != -1:
        if text[start + 1 : start + 3].upper() not in _ALLOWED_ESCAPES:
            return False
        start = text.find("%", start + 3)
    return True


def _walk(node: _Node, segments: list[str], index: int) -> RouteMatch | None:
    if index == len(segments):
        return node.route
    segment = segments[index]
    literal = node.literals.get(segment)
    if literal is not None:
        found = _walk(literal, segments, index + 1)
        if found is not None:
            return found
    # A literal that leads nowhere gives way to the parameter, as in routers
    # that prefer static segments and backtrack.
    if node.param is not None:
        return _walk(node.param, segments, index + 1)
    return None


class _Builder:
    """Validates route lines one by one and grows the tries."""

    def __init__(self, source: str, known_scopes: frozenset[str]) -> None:
        self.source = source
        self.known_scopes = known_scopes
        self.routes: list[RouteMatch] = []
        self.tries: dict[str, _Trie] = {}
        # Routes by method and shape (literals, with None for parameters):
        # two routes of one shape match exactly the same paths, whatever
        # their parameter names.
        self.shapes: dict[tuple[str, tuple[str | None, ...]], tuple[int, RouteMatch]] = {}

    def error(self, line: int, reason: str) -> RouteFileError:
        return RouteFileError(self.source, line, reason)

    def add(self, line: int, fields: list[str]) -> None:
        if len(fields) != _FIELDS:
            raise self.error(
                line,
                f"expected {_FIELDS} fields (METHOD PATH SCOPES STATUS), found {len(fields)}",
            )
        method, template, scope_list, status = fields
        self.check_method(line, method)
        segments = self.parse_template(line, template)
        scopes = self.parse_scopes(line, scope_list)
        if status not in _STATUSES:
            raise self.error(line, f"status {status!r} is not 'confirmed' or 'unconfirmed'")
        route = RouteMatch(
            route=f"{method} {template}",
            required_scopes=scopes,
            confirmed=_STATUSES[status],
        )
        self.insert(line, method, segments, route)
        self.routes.append(route)

    def check_method(self, line: int, method: str) -> None:
        if method == "HEAD":
            raise self.error(line, "HEAD follows GET; list the GET route instead")
        if method not in METHODS:
            raise self.error(line, f"method {method!r} is not one of {', '.join(sorted(METHODS))}")

    def parse_template(self, line: int, template: str) -> list[str | None]:
        """The template's segments, ``None`` standing for a parameter."""
        if not template.startswith("/"):
            raise self.error(line, f"path {template!r} does not start with '/'")
        segments: list[str | None] = []
        names: set[str] = set()
        for segment in template[1:].split("/"):
            if not segment:
                raise self.error(line, f"path {template!r} has an empty segment")
            param = _PARAM.fullmatch(segment)
            if param is not None:
                name = param.group(1)
                if name in names:
                    raise self.error(line, f"path {template!r} repeats parameter {{{name}}}")
                names.add(name)
                segments.append(None)
            elif "{" in segment or "}" in segment:
                raise self.error(
                    line,
                    f"segment {segment!r} of {template!r}: a parameter is a whole segment "
                    "'{name}' with a letter, digit or '_' name not starting with a digit",
                )
            elif (
                _SEGMENT.fullmatch(segment) is None
                or segment in _DOT_SEGMENTS
                or ("%" in segment and not _escapes_allowed(segment))
            ):
                raise self.error(
                    line,
                    f"segment {segment!r} of {template!r} is not canonical, "
                    "so no request path could match it",
                )
            else:
                segments.append(segment)
        return segments

    def parse_scopes(self, line: int, scope_list: str) -> tuple[str, ...]:
        scopes = scope_list.split(",")
        if not any(scopes):
            raise self.error(line, "the route has no scopes")
        if not all(scopes):
            raise self.error(line, f"scope list {scope_list!r} has an empty entry")
        if len(set(scopes)) != len(scopes):
            raise self.error(line, f"scope list {scope_list!r} repeats a scope")
        for scope in scopes:
            if scope not in self.known_scopes:
                raise self.error(line, f"unknown scope {scope!r}")
        return tuple(scopes)

    def insert(self, line: int, method: str, segments: list[str | None], route: RouteMatch) -> None:
        shape = (method, tuple(segments))
        earlier = self.shapes.get(shape)
        if earlier is not None:
            earlier_line, earlier_route = earlier
            raise self.error(
                line,
                f"{route.route} matches the same paths as {earlier_route.route} "
                f"(line {earlier_line})",
            )
        self.shapes[shape] = (line, route)
        trie = self.tries.setdefault(method, _Trie(root=_Node()))
        trie.depth = max(trie.depth, len(segments))
        node = trie.root
        for segment in segments:
            if segment is None:
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.literals.setdefault(segment, _Node())
        node.route = route
