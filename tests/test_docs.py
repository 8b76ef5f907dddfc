"""The project documents itself: every markdown file of the repository points
only inside it, at files and headings that exist, and the API reference lists
the scope catalog and the packaged route table as the code has them.

A reader who clones the repository must be able to follow every link and
find every path a document names. Checked are link targets (inline,
reference-style and HTML) and path mentions anywhere in the text, code
included: a mention is a token with a ``/`` whose first segment is a
top-level entry of the repository, or one that climbs with ``../``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.domain.routes import RouteTable
from server.domain.scopes import SCOPE_CATALOG

ROOT = Path(__file__).resolve().parent.parent
API_REFERENCE = ROOT / "docs" / "API.md"

# Not the project's own documents: the virtualenv, generated code, and what
# installs, builds, test runs and a local server leave behind.
IGNORED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "generated",
        "var",
        "build",
        "dist",
        "node_modules",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    }
)

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
_HTML_LINK = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S*")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Runs of path characters; a leading "/" makes an absolute or HTTP path (such
# as /api/v4/users), which is not a file of the repository.
_PATH_TOKEN = re.compile(r"(?<![\w.~/:@%+-])[\w.-][\w./-]*")


def markdown_files(root: Path) -> list[Path]:
    """Every ``.md`` file under ``root`` outside the ignored directories."""
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if name not in IGNORED_DIRS and not name.endswith(".egg-info")
        )
        found.extend(Path(directory, name) for name in sorted(files) if name.endswith(".md"))
    return found


def without_code(text: str) -> str:
    """``text`` with fenced blocks and code spans blanked out: a link or a
    heading written inside code is not one."""
    text = _FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)
    return _CODE_SPAN.sub("", text)


def anchors(text: str) -> set[str]:
    """The fragment ids GitHub gives the headings of a markdown text, plus
    explicit ``<a id=...>`` anchors."""
    found = set(_HTML_ANCHOR.findall(without_code(text)))
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def link_targets(text: str) -> Iterator[str]:
    """Every link target of a markdown text, code excluded."""
    prose = without_code(text)
    for pattern in (_INLINE_LINK, _REFERENCE_LINK, _HTML_LINK):
        yield from pattern.findall(prose)


def path_mentions(text: str, top_level: set[str]) -> Iterator[str]:
    """Tokens of ``text`` (code included, link targets and URLs not) that
    name a path of the repository or climb out of their directory."""
    for pattern in (_INLINE_LINK, _REFERENCE_LINK, _HTML_LINK, _URL):
        text = pattern.sub(" ", text)
    for token in _PATH_TOKEN.findall(text):
        if token.endswith(".") and not token.endswith(".."):
            token = token[:-1]  # the end of a sentence
        if "/" not in token:
            continue
        parts = [part for part in token.split("/") if part not in ("", ".")]
        if ".." in parts or (parts and parts[0] in top_level):
            yield token


def problems(document: Path, root: Path) -> list[str]:
    """What is wrong with the links and path mentions of ``document``."""
    text = document.read_text(encoding="utf-8")
    top_level = {
        entry.name
        for entry in root.iterdir()
        if entry.name not in IGNORED_DIRS and not entry.name.endswith(".egg-info")
    }
    found = []
    for target in link_targets(text):
        if not target or _SCHEME.match(target):
            continue
        path, _, fragment = target.partition("#")
        # As on GitHub, a leading "/" starts at the top of the repository.
        base = root if path.startswith("/") else document.parent
        linked = Path(os.path.normpath(base / path.lstrip("/"))) if path else document
        error = _missing(linked, root)
        if (
            error is None
            and fragment
            and linked.suffix == ".md"
            and fragment not in anchors(linked.read_text(encoding="utf-8"))
        ):
            error = f"has no heading #{fragment}"
        if error is not None:
            found.append(f"link {target}: {error}")
    for mention in path_mentions(text, top_level):
        # A mention that climbs is relative to its document, as a link would
        # be; any other names a path from the top of the repository.
        climbs = ".." in mention.split("/")
        error = _missing((document.parent if climbs else root) / mention, root)
        if error is not None:
            found.append(f"path {mention}: {error}")
    return found


def _missing(path: Path, root: Path) -> str | None:
    resolved = Path(os.path.normpath(path))
    if not resolved.is_relative_to(root):
        return "leaves the repository"
    if not resolved.exists():
        return "does not exist"
    return None


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("document", markdown_files(ROOT), ids=_relative)
def test_links_and_paths_of_a_document_stay_in_the_repository_and_exist(
    document: Path,
) -> None:
    assert problems(document, ROOT) == []


def test_the_readme_and_the_api_reference_are_among_the_checked_documents() -> None:
    checked = {_relative(path) for path in markdown_files(ROOT)}
    assert {"README.md", "docs/API.md"} <= checked
    assert not any(path.startswith((".venv/", "generated/")) for path in checked)


def test_the_readme_links_to_the_api_reference() -> None:
    assert "docs/API.md" in set(link_targets((ROOT / "README.md").read_text("utf-8")))


def test_a_link_or_path_outside_the_repository_or_to_nothing_is_reported(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "app.py").write_text("")
    (tmp_path / "README.md").write_text("# Quick start\n")
    document = tmp_path / "docs" / "GUIDE.md"
    document.write_text(
        "# Guide\n\n"
        "See [the spec](../../elsewhere/spec.md), [the app](../server/app.py),\n"
        "[gone](../server/gone.py), [start](../README.md#quick-start),\n"
        "[nowhere](../README.md#no-such-heading), [up](#guide) and\n"
        "[web](https://example.com/x/../y).\n\n"
        "The wiring is in `server/app.py`; `server/missing.py` is not, nor is\n"
        "`../elsewhere/spec.md`. `/api/v4/users` is an HTTP path.\n\n"
        "```sh\ncat ../../outside.txt server/also-missing.py\n```\n"
    )

    assert problems(document, tmp_path) == [
        "link ../../elsewhere/spec.md: leaves the repository",
        "link ../server/gone.py: does not exist",
        "link ../README.md#no-such-heading: has no heading #no-such-heading",
        "path server/missing.py: does not exist",
        "path ../elsewhere/spec.md: does not exist",
        "path ../../outside.txt: leaves the repository",
        "path server/also-missing.py: does not exist",
    ]


def test_headings_get_github_anchors() -> None:
    text = "# API reference\n## `Check` and more!\n## Errors\n## Errors\n```\n# not one\n```\n"

    assert anchors(text) == {"api-reference", "check-and-more", "errors", "errors-1"}


def test_the_api_reference_lists_the_scope_catalog_as_the_code_has_it() -> None:
    rows = re.findall(
        r"^\| `([a-z_.]+)` \| ([A-Z][A-Za-z ]+) \| (.+?) \|$",
        API_REFERENCE.read_text("utf-8"),
        re.MULTILINE,
    )

    assert rows == [
        (scope.name, scope.domain, scope.description)
        for scope in sorted(SCOPE_CATALOG.values(), key=lambda scope: scope.name)
    ]


def test_the_api_reference_lists_the_packaged_route_table_as_it_is() -> None:
    rows = re.findall(
        r"^\| `([A-Z]+ /\S+)` \| (.+?) \| (confirmed|unconfirmed) \|$",
        API_REFERENCE.read_text("utf-8"),
        re.MULTILINE,
    )
    table = RouteTable.load(known_scopes=SCOPE_CATALOG.keys())

    assert [
        (route, tuple(re.findall(r"`([a-z_.]+)`", scopes)), status == "confirmed")
        for route, scopes, status in rows
    ] == [(match.route, match.required_scopes, match.confirmed) for match in table.routes]
