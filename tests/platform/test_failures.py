"""Transient failures are retried with backoff; permanent ones fail at once with a clear message.

The outage is real: the product table's PostgreSQL is reached through a loopback TCP port that
refuses connections for the first seconds of the run (as a restarting server does)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from urllib.parse import parse_qs, urlparse

import dagster as dg
import psycopg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from conftest import REPO, shared_file
from geoembed.core.rasters import RasterInputError
from geoembed.landcover.settings import load_settings
from geoembed.core.transient import is_transient
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.core.failures import TRANSIENT_RETRY
from geoembed_resources import InferenceDevice, PostgresDatabase
from geoembed_resources.postgres import DatabaseRefusedError, embedded_dsn


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connecting is refused


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def test_classification_of_real_errors(tmp_path):
    port = _refused_port()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2")
    assert is_transient(refused.value)
    with pytest.raises(psycopg.OperationalError) as missing_db:
        psycopg.connect(_with_dbname(embedded_dsn(tmp_path / "pg"), "no_such_database"))
    assert "does not exist" in str(missing_db.value) and not is_transient(missing_db.value)
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(_client_error("SlowDown", 503))
    assert not is_transient(_client_error("NoSuchBucket", 404))
    assert not is_transient(_client_error("AccessDenied", 403))
    assert is_transient(OSError(errno.ECONNREFUSED, "refused"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(RasterInputError("raster 'x.tif' has no CRS"))
    # The cause chain counts: a wrapper raised from a refused connection is transient.
    try:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError as exc:
            raise RuntimeError("while loading region 8029fffffffffff") from exc
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert TRANSIENT_RETRY.max_retries >= 3 and TRANSIENT_RETRY.backoff == dg.Backoff.EXPONENTIAL


def _with_dbname(uri: str, dbname: str) -> str:
    parsed = urlparse(uri)
    return parsed._replace(path=f"/{dbname}").geturl()


class LateUnixForwarder:
    """A loopback TCP port that refuses connections until ``opens_after`` seconds have passed, then
    forwards each connection to the embedded server's Unix socket."""

    def __init__(self, unix_socket: str, opens_after: float):
        self.unix_socket = unix_socket
        self.port = _refused_port()
        self.opened_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Timer(opens_after, self._serve)
        self._thread.daemon = True
        self._thread.start()

    def _serve(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        server.settimeout(0.2)
        self.opened_at = time.monotonic()
        while not self._stop.is_set():
            try:
                client, _ = server.accept()
            except socket.timeout:
                continue
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.unix_socket)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
        server.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._thread.cancel()
        self._stop.set()


def _step_events(instance, run_id: str, event_type: dg.DagsterEventType) -> list:
    return [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type == event_type]


@pytest.mark.integration
def test_database_briefly_unavailable_is_retried_and_a_refusal_fails_at_once(tmp_path, monkeypatch):
    shared_file("nlcd2011_zion.tif")
    settings = load_settings(REPO / "products" / "nlcd_zion.yaml")
    name = settings.name
    data = tmp_path / "data"
    pg_uri = embedded_dsn(data / "postgres")
    socket_dir = parse_qs(urlparse(pg_uri).query)["host"][0]
    base = local_resources(data, inference_device=InferenceDevice(device="cpu"))
    key = lambda asset: dg.AssetKey([name, asset])  # noqa: E731
    with dg.instance_for_test() as instance:
        resources = base
        assets = list(build_definitions([settings], resources).assets)
        dg.materialize(assets, selection=[key("h3_regions")], instance=instance, resources=resources)
        partition = sorted(instance.get_dynamic_partitions(f"{name}_regions"))[0]
        dg.materialize(assets, selection=[key("landcover_samples")], instance=instance, resources=resources,
                       partition_key=partition)
        dg.materialize(assets, selection=[key("embedding_model")], instance=instance, resources=resources,
                       run_config={"ops": {f"{name}__embedding_model": {"config": {"steps": 10, "batch_size": 32}}}})
        dg.materialize(assets, selection=[key("cell_embeddings")], instance=instance, resources=resources,
                       partition_key=partition)

        # Transient: the server is unreachable (connection refused) for the first 3 s of the load; the
        # resource tries once, the step's retry policy backs off and runs it again.
        forwarder = LateUnixForwarder(f"{socket_dir}/.s.PGSQL.5432", opens_after=3.0)
        try:
            user = urlparse(pg_uri).username or "postgres"
            flaky = PostgresDatabase(dsn=f"host=127.0.0.1 port={forwarder.port} dbname=postgres user={user}",
                                     connect_attempts=1, connect_timeout=2)
            started = time.monotonic()
            result = dg.materialize(assets, selection=[key("embedding_table")], instance=instance,
                                    resources={**base, "database": flaky}, partition_key=partition)
            assert result.success
            retries = _step_events(instance, result.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
            assert len(retries) >= 1
            assert "unreachable" in str(retries[0].dagster_event.event_specific_data.error.cause or
                                        retries[0].dagster_event.event_specific_data.error)
            assert forwarder.opened_at is not None and forwarder.opened_at - started >= 2.5
            rows = result.asset_materializations_for_node(f"{name}__embedding_table")[0].metadata["rows"].value
            assert rows > 0
            with flaky.connect(read_only=True) as conn:
                table = conn.execute("SELECT table_name FROM geoembed.model_tables WHERE product = %s",
                                     (name,)).fetchone()[0]
                assert conn.execute(f'SELECT count(*) FROM geoembed."{table}"').fetchone()[0] == rows
        finally:
            forwarder.close()

        # Permanent: the server answers that the database does not exist. No retry, and the message
        # names the server and the problem.
        missing = PostgresDatabase(dsn=_with_dbname(pg_uri, "no_such_database"))
        started = time.monotonic()
        result = dg.materialize(assets, selection=[key("embedding_table")], instance=instance,
                                resources={**base, "database": missing}, partition_key=partition,
                                raise_on_error=False)
        assert not result.success
        assert time.monotonic() - started < TRANSIENT_RETRY.delay  # failed without waiting for a retry
        assert not _step_events(instance, result.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
        failure = _step_events(instance, result.run_id, dg.DagsterEventType.STEP_FAILURE)[0]
        message = failure.dagster_event.event_specific_data.error.message
        assert DatabaseRefusedError.__name__ in message
        assert "no_such_database" in message and "does not exist" in message
