"""Files the server generates are published whole, once, and private (mode
0600: the database and its -wal and -shm, the secrets, the key pair)."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

from server.files import publish_new_file, replace_file
from tests.harness import running_server
from voiso.apikeys.v1 import key_admin_pb2 as pb


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_published_complete_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    assert publish_new_file(path, b"first\n") is True
    assert path.read_bytes() == b"first\n"
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_an_existing_file_is_kept_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    publish_new_file(path, b"first\n")
    assert publish_new_file(path, b"second\n") is False
    assert path.read_bytes() == b"first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_of_publishers_starting_together_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    start = threading.Barrier(8)
    won: dict[int, bool] = {}

    def publish(number: int) -> None:
        start.wait()
        won[number] = publish_new_file(path, f"publisher {number}\n".encode())

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [number for number, published in won.items() if published]
    assert len(winners) == 1
    assert path.read_text() == f"publisher {winners[0]}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_replace_file_overwrites_with_the_given_mode(tmp_path: Path) -> None:
    path = tmp_path / "public.pem"
    publish_new_file(path, b"stale\n")
    replace_file(path, b"fresh\n", mode=0o644)
    assert path.read_bytes() == b"fresh\n"
    assert _mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["public.pem"]


def _modes(directory: Path) -> dict[str, int]:
    return {path.name: _mode(path) for path in directory.iterdir()}


async def test_every_file_a_running_server_writes_is_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    previous = os.umask(0o022)
    try:
        async with running_server(data_dir) as h:
            await h.admin.CreateKey(
                pb.CreateKeyRequest(name="k", scopes=["users.read"]), metadata=h.auth()
            )
            modes = await asyncio.to_thread(_modes, data_dir)
    finally:
        os.umask(previous)

    assert modes == {
        "apikeys.db": 0o600,
        "apikeys.db-wal": 0o600,
        "apikeys.db-shm": 0o600,
        "hmac-secret": 0o600,
        "encryption-keys": 0o600,
        "dev-admin-signing-key.pem": 0o600,
        "dev-admin-public-key.pem": 0o600,
    }
