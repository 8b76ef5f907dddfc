"""A throwaway PostgreSQL cluster for tests that stop, restart or break the
database. The shared server on 5432 is never touched by them.

``initdb`` refuses to run as root, so as root every PostgreSQL command runs
as the ``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayCluster:
    """A private cluster in a temporary folder on a port of its own.

    ``standby_of`` makes it a streaming-replication standby instead of a new
    cluster: a base backup of the primary reached at ``standby_of``, which
    keeps streaming from that port once started.
    """

    def __init__(self, *, standby_of: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="apikeys-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        if standby_of is None:
            self._run(
                _bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
            )
        else:
            self._run(
                _bin("pg_basebackup"),
                *("-h", "127.0.0.1", "-p", str(standby_of), "-U", "postgres"),
                *("-D", str(self.data), "-R", "-X", "stream", "--no-sync"),
            )

    @property
    def url(self) -> str:
        """The asyncpg URL of database ``postgres`` in this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "-l",
            str(self.root / "log"),
            "start",
        )

    def promote(self) -> None:
        """Ends a standby's recovery: it becomes a primary on a new timeline
        with whatever it had received."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-w", "promote")

    def stop(self, mode: str = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        subprocess.run(
            self._command(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._command(*args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {result.stderr or result.stdout}")
