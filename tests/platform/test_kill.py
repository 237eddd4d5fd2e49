"""SIGKILL in the middle of writing a partition, on a real `dagster dev` (webserver, daemon, code server).

The kills land mid-write deterministically: the test holds the lock a writer needs next, waits until
the writer is inside its write, then kills the run's processes (run worker and step process):

1. Zarr: the test holds the product store's commit lock (an icechunk repository on local disk
   serialises commits with it); `cell_embeddings` writes its first region's chunks and attributes into
   its session, then blocks at the commit. Kill: the store is still the snapshot it was, whole.
2. PostgreSQL: the test holds a row lock in the first region; `embedding_table`'s transaction
   (DELETE the region's rows, COPY the new ones) blocks inside its DELETE. Kill.

The runs are launched as the UI's "Materialize" over the whole partition range launches them: one run
each, through the webserver's GraphQL API and the run queue (the backfill path, with its daemon's 30 s
ticks, is tested in test_backfill.py). Each time the run is marked failed (the code server that
launched it reports the dead worker). A
reader polling the table the whole time never sees a region half old and half new, and the re-run
gives exactly what an uninterrupted run gave (same bytes in Zarr, same rows in the table).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import zarr
from filelock import FileLock

from geoembed.core.sinks.repository import snapshot_store, transact

from conftest import REPO, dagster_deployment, shared_file
from geoembed.core.backfill import launch_run, serve_dagster, wait_for_run
from geoembed.landcover.settings import load_settings
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_resources import InferenceDevice, PostgresDatabase, ProductStorage

pytestmark = pytest.mark.integration
PRODUCT = REPO / "products" / "nlcd_zion.yaml"
ARTIFACTS = REPO / "test-artifacts" / "kill"
STALE = "stale-rows-marker"
ARRAYS = ("embedding", "status", "model_version", "source_version")


def _table_rows(database: PostgresDatabase, table: str) -> dict[int, tuple]:
    with database.connect(read_only=True) as conn:
        rows = conn.execute(f'SELECT h3, region, model_version, source_version, embedding FROM geoembed."{table}"')
        return {h3: (region, mv, sv, tuple(e.to_list())) for h3, region, mv, sv, e in rows}


class TableReader(threading.Thread):
    """Polls the table: per region, every row must be stale or none (never a mix), and the count whole."""

    def __init__(self, database: PostgresDatabase, table: str, counts: dict[int, int]):
        super().__init__(daemon=True)
        self.database, self.table, self.counts = database, table, counts
        self.stop = threading.Event()
        self.polls = 0
        self.violations: list[str] = []

    def run(self) -> None:
        with self.database.connect(read_only=True) as conn:
            while not self.stop.is_set():
                result = conn.execute(f'SELECT region, count(*), count(*) FILTER (WHERE source_version = %s) '
                                      f'FROM geoembed."{self.table}" GROUP BY region', (STALE,)).fetchall()
                seen = {region: (total, stale) for region, total, stale in result}
                for region, expected in self.counts.items():
                    total, stale = seen.get(region, (0, 0))
                    if total != expected or stale not in (0, total):
                        self.violations.append(f"region {region:x}: {total} rows of {expected}, {stale} stale")
                self.polls += 1
                time.sleep(0.01)


def _run_pids(instance, run_id: str) -> set[int]:
    """The run's own processes: its run worker (RUN_START) and step processes (STEP_START); not the
    daemon or the code server, which write other events of the run."""
    kinds = {dg.DagsterEventType.RUN_START, dg.DagsterEventType.STEP_START}
    events = [e.dagster_event for e in instance.all_logs(run_id, of_type=kinds)]
    return {e.pid for e in events if e.pid and e.pid != os.getpid()}


def _kill_run_when(instance, run_id: str, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"the run never reached {what}"
        run = instance.get_run_by_id(run_id)
        assert not run.is_finished, f"the run finished ({run.status}) before reaching {what}"
        time.sleep(0.05)
    for pid in _run_pids(instance, run_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _attrs(store: Path) -> dict:
    return dict(zarr.open_group(snapshot_store(store)[0], mode="r").attrs)


def _wait_status(instance, run_id: str, timeout: float = 120) -> dg.DagsterRunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.is_finished:
            return run.status
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} was not marked finished within {timeout} s after the kill")


def test_sigkill_mid_write_fails_the_run_and_rerun_equals_uninterrupted(tmp_path, monkeypatch):
    shared_file("nlcd2011_zion.tif")
    settings = load_settings(PRODUCT)
    name = settings.name
    env = dagster_deployment(tmp_path, PRODUCT, monkeypatch)
    data = Path(env["GEOEMBED_DATA_DIR"])
    storage = ProductStorage(root=str(data))
    database = PostgresDatabase(embedded_dir=str(data / "postgres"))
    resources = local_resources(data, storage=storage, database=database, inference_device=InferenceDevice(device="cpu"))
    assets = list(build_definitions([settings], resources).assets)
    key = lambda asset: dg.AssetKey([name, asset])  # noqa: E731
    store = storage.embeddings_path(name)

    with dg.DagsterInstance.get() as instance:
        dg.materialize(assets, selection=[key("h3_regions")], instance=instance, resources=resources)
        partitions = instance.get_dynamic_partitions(f"{name}_regions")
        whole = {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[-1]}
        dg.materialize(assets, selection=[key("landcover_samples")], instance=instance, resources=resources, tags=whole)
        dg.materialize(assets, selection=[key("embedding_model")], instance=instance, resources=resources,
                       run_config={"ops": {f"{name}__embedding_model": {"config": {"steps": 20, "batch_size": 64}}}})

        with serve_dagster("dagster", env, ARTIFACTS / "dagster_dev.log") as url:
            selection = [f"{name}/cell_embeddings", f"{name}/embedding_table"]
            whole_range = (partitions[0], partitions[-1])
            # An uninterrupted run, launched the same way as the runs below: the reference.
            assert wait_for_run(url, launch_run(url, selection, whole_range), timeout=600) == "SUCCESS"
            reference = {v: storage.open_product(name)[v].values.copy() for v in ARRAYS}
            reference_attrs = _attrs(store)
            with database.connect(read_only=True) as conn:
                table = conn.execute("SELECT table_name FROM geoembed.model_tables WHERE product = %s",
                                     (name,)).fetchone()[0]
            reference_rows = _table_rows(database, table)
            counts = {}
            for region, *_ in reference_rows.values():
                counts[region] = counts.get(region, 0) + 1

            # Make the outputs "old" so that old and new can be told apart: zeros in the store, a marker in the table.
            old = np.where(np.isnan(reference["embedding"]), np.nan, 0).astype(np.float32)

            def make_old(writable) -> None:
                zarr.open_group(writable, mode="r+")["embedding"][:] = old

            old_snapshot = transact(store, make_old, "test: old outputs").snapshot
            with database.connect() as conn:
                conn.execute(f'UPDATE geoembed."{table}" SET source_version = %s', (STALE,))
            reader = TableReader(database, table, counts)
            reader.start()
            first_region = sorted(counts)[0]

            # 1. Killed at the commit of its first region: chunks written into its session, not committed.
            chunks_before = set((store / "chunks").iterdir())
            with FileLock(str(store / ".commit.lock")):
                run_id = launch_run(url, selection, whole_range)
                _kill_run_when(instance, run_id, lambda: set((store / "chunks").iterdir()) > chunks_before,
                               "the store write")
                assert _wait_status(instance, run_id) == dg.DagsterRunStatus.FAILURE
            after_kill = storage.open_product(name)
            assert after_kill.attrs["snapshot"] == old_snapshot  # nothing of the dead writer is visible
            np.testing.assert_array_equal(after_kill["embedding"].values, old)

            # 2. Killed inside the table's transaction: the DELETE of the first region waits on our row lock.
            with database.connect() as blocker, database.connect() as monitor:
                with blocker.transaction():
                    blocker.execute(f'SELECT h3 FROM geoembed."{table}" WHERE region = %s FOR UPDATE',
                                    (first_region,)).fetchall()
                    run_id = launch_run(url, selection, whole_range)

                    def delete_waiting() -> bool:
                        waiting = monitor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                                  "AND query LIKE 'DELETE FROM%%'").fetchone()[0]
                        return waiting > 0

                    _kill_run_when(instance, run_id, delete_waiting, "the table transaction")
                    assert _wait_status(instance, run_id) == dg.DagsterRunStatus.FAILURE
                # our lock is released: the dead writer's backend finds its client gone and rolls back
            deadline = time.monotonic() + 60
            with database.connect(read_only=True) as conn:
                while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DELETE FROM%%' "
                                   "AND state <> 'idle' AND pid <> pg_backend_pid()").fetchone()[0]:
                    assert time.monotonic() < deadline, "the killed writer's transaction is still open"
                    time.sleep(0.2)
                stale = conn.execute(f'SELECT count(*) FROM geoembed."{table}" WHERE source_version = %s',
                                     (STALE,)).fetchone()[0]
            assert stale == sum(counts.values())  # the killed transaction changed nothing

            # 3. The re-run.
            assert wait_for_run(url, launch_run(url, selection, whole_range), timeout=600) == "SUCCESS"
        reader.stop.set()
        reader.join(timeout=30)

    assert reader.polls > 50 and not reader.violations, reader.violations[:5]
    rerun = storage.open_product(name)
    for variable in ARRAYS:
        np.testing.assert_array_equal(rerun[variable].values, reference[variable], err_msg=variable)
    assert _attrs(store) == reference_attrs
    assert _table_rows(database, table) == reference_rows
