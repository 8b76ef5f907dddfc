"""Tests and benchmarks build the server through its wiring, never by patching.

A benchmark whose baseline is made by assigning to a module attribute measures
the real server without a word once that attribute is renamed; a test that
reads a private attribute breaks, or worse keeps passing, when the inside
changes. So this walks the syntax trees of ``tests/`` and ``bench/`` and
fails on:

- an assignment, ``del``, ``setattr``/``delattr``, ``monkeypatch.setattr`` or
  ``mock.patch`` aimed at an attribute of a ``server`` module or of ``grpc``
  (or of anything imported from them, under any alias);
- an attribute whose name is private (one leading underscore) read from
  anything but ``self`` or ``cls``, and a private name imported from
  ``server``.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUARDED = ("server", "grpc")
SCANNED = ("tests", "bench")
PATCHERS = {"setattr", "delattr", "patch", "object", "setitem", "delitem"}


def _guarded_module(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in GUARDED)


def _root(node: ast.expr) -> ast.expr:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


class _Finder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.guarded: set[str] = set()
        self.problems: list[tuple[int, str]] = []

    # Names bound to server or grpc things, through imports and assignments.

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _guarded_module(alias.name):
                self.guarded.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0 and _guarded_module(module):
            for alias in node.names:
                self.guarded.add(alias.asname or alias.name)
                if module.startswith("server") and _private(alias.name):
                    self._flag(node, f"imports the private name {alias.name} from {module}")

    def _refers_to_guarded(self, node: ast.expr) -> bool:
        root = _root(node)
        if isinstance(root, ast.Name) and root.id in self.guarded:
            return True
        # importlib.import_module("server.app"), sys.modules["grpc"]
        return isinstance(node, ast.Call | ast.Subscript) and any(
            isinstance(inner, ast.Constant)
            and isinstance(inner.value, str)
            and _guarded_module(inner.value)
            for inner in ast.walk(node)
        )

    def _bind(self, targets: list[ast.expr], value: ast.expr | None) -> None:
        if value is None or not self._refers_to_guarded(value):
            return
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    self.guarded.add(name.id)

    # What is flagged.

    def _check_targets(self, node: ast.stmt, targets: list[ast.expr]) -> None:
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute | ast.Subscript) and self._refers_to_guarded(
                    part.value
                ):
                    self._flag(node, f"assigns to {ast.unparse(part)}")
                    break

    def visit_Assign(self, node: ast.Assign) -> None:
        self._check_targets(node, node.targets)
        self._bind(node.targets, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_targets(node, [node.target])
        self._bind([node.target], node.value)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_targets(node, [node.target])
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._check_targets(node, node.targets)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in PATCHERS and node.args:
            target = node.args[0]
            aimed = isinstance(target, ast.Constant) and isinstance(target.value, str)
            if aimed and _guarded_module(str(target.value).split(":")[0]):
                self._flag(node, f"patches {target.value!r}")
            elif self._refers_to_guarded(target):
                self._flag(node, f"patches an attribute of {ast.unparse(target)}")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        owner = node.value
        if _private(node.attr) and not (
            isinstance(owner, ast.Name) and owner.id in {"self", "cls"}
        ):
            self._flag(node, f"reads the private attribute {ast.unparse(node)}")
        self.generic_visit(node)

    def _flag(self, node: ast.AST, what: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), what))


def problems_in(source: str) -> list[tuple[int, str]]:
    """What the guard finds in one module's source."""
    finder = _Finder()
    tree = ast.parse(source)
    # Imports and aliases first, wherever they are, so that a patch above
    # the import that makes its target guarded is still found.
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            finder.visit(node)
    finder.visit(tree)
    return sorted(set(finder.problems))


def _scanned_files() -> Iterator[Path]:
    for folder in SCANNED:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_test_or_benchmark_patches_the_server_or_reads_its_privates() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in _scanned_files()
        for line, what in problems_in(path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "import server.app\nserver.app.open_store = None",
        "import server.app as wiring\nwiring.AuthorizeServicer = object",
        "from server import app\napp.open_store = None",
        "from server.app import ApiKeysServer\nApiKeysServer.start = None",
        "import grpc\ngrpc.aio.server = None",
        "from grpc import aio\naio.server = None",
        "import grpc\nbuild = grpc.aio\nbuild.server = None",
        "import server.app\nsetattr(server.app, 'open_store', None)",
        "import server.app\ndelattr(server.app, 'open_store')",
        "def t(monkeypatch):\n    monkeypatch.setattr('server.app.open_store', None)",
        "import grpc\ndef t(monkeypatch):\n    monkeypatch.setattr(grpc.aio, 'server', None)",
        "from unittest import mock\nwith mock.patch('grpc.aio.server'):\n    pass",
        "import server.cache\nfrom unittest import mock\nmock.patch.object(server.cache, 'X')",
        "import importlib\nm = importlib.import_module('server.app')\nm.open_store = None",
        "import sys\nsys.modules['server.app'].open_store = None",
        "def t(h):\n    return h.server._parts",
        "def t(h):\n    return h.server.parts.cache._found",
        "from server.app import _private_helper",
        "import server.app\nserver.app.open_store += 1",
        "import server.app\ndel server.app.open_store",
    ],
)
def test_the_guard_finds_each_way_of_patching(source: str) -> None:
    assert problems_in(source), source


@pytest.mark.parametrize(
    "source",
    [
        "from server.app import Wiring\nwiring = Wiring()\nwiring2 = wiring",
        "class Fake:\n    def __init__(self):\n        self._code = 1\n"
        "    def code(self):\n        return self._code",
        "def t(monkeypatch):\n    monkeypatch.setenv('APIKEYS_SERVER', 'x')",
        "import dataclasses\nfrom server.app import Wiring\n"
        "w = dataclasses.replace(Wiring(), open_store=None)",
        "def t(h):\n    return h.server.parts.cache",
        "import json\njson.loads = 1",
    ],
)
def test_the_guard_lets_wiring_and_fakes_be(source: str) -> None:
    assert problems_in(textwrap.dedent(source)) == []
