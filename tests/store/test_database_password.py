"""The database password need not be in the URL, where it would show in the
server's command line or environment: libpq's ``PGPASSWORD`` and
``PGPASSFILE`` work as they do for psql. The cluster is a throwaway one whose
TCP connections are made to need a password."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from server.domain.errors import StoreUnavailable
from server.store import open_store
from tests.pg_cluster import ThrowawayCluster

pytestmark = pytest.mark.postgres


async def test_the_database_password_can_come_from_libpq_variables(
    cluster: ThrowawayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-file"))
    await _require_password(cluster, "s3cret")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{cluster.port}:*:postgres:s3cret\n")
    passfile.chmod(0o600)

    with pytest.raises(StoreUnavailable):
        await open_store(cluster.url)
    for variable, value in (("PGPASSWORD", "s3cret"), ("PGPASSFILE", str(passfile))):
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            store = await open_store(cluster.url)
            try:
                await store.probe_write()
            finally:
                await store.close()


async def _require_password(cluster: ThrowawayCluster, password: str) -> None:
    """Gives user postgres ``password`` and makes TCP connections need it."""
    admin = await asyncpg.connect(
        make_url(cluster.url).set(drivername="postgresql").render_as_string()
    )
    try:
        await admin.execute(f"ALTER USER postgres PASSWORD '{password}'")
    finally:
        await admin.close()
    hba = cluster.data / "pg_hba.conf"
    lines = await asyncio.to_thread(hba.read_text)
    await asyncio.to_thread(
        hba.write_text,
        "\n".join(
            line.replace("trust", "scram-sha-256") if line.startswith("host") else line
            for line in lines.splitlines()
        )
        + "\n",
    )
    await asyncio.to_thread(cluster.stop)
    await asyncio.to_thread(cluster.start)
