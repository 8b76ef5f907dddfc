"""Files the server makes for itself in its data directory.

Several servers may start together on one data directory (``--workers``,
replicas on a shared volume). A file they would all generate, such as a
development secret, must end up made by exactly one of them, and no reader
may ever see one half-written.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PRIVATE_MODE = 0o600


def publish_new_file(path: Path, content: bytes) -> bool:
    """Creates ``path`` with ``content`` and mode 0600 unless it exists.

    Published with ``link()``, which refuses an existing name: of processes
    publishing together exactly one wins. Returns True when this call
    published, False when the file already existed (it is left as it was).
    Raises ``OSError`` when the directory cannot be written.
    """
    staging = _staged(path, content, PRIVATE_MODE)
    try:
        os.link(staging, path)
    except FileExistsError:
        return False
    finally:
        staging.unlink(missing_ok=True)
    return True


def replace_file(path: Path, content: bytes, *, mode: int) -> None:
    """Writes ``path`` with ``content`` and ``mode``, replacing any earlier
    file in one step. For files derived from others, where the last writer
    may win. Raises ``OSError`` when the directory cannot be written."""
    staging = _staged(path, content, mode)
    try:
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _staged(path: Path, content: bytes, mode: int) -> Path:
    """``content`` written in full and fsynced under a private name next to
    ``path``, so that publishing it is one rename or link."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            # os.open applies the umask; the mode is the file's contract.
            os.fchmod(file.fileno(), mode)
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return staging
