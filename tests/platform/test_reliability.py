"""Reliability: concurrent runs of different partitions into one Zarr store and one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from conftest import REPO, dagster_deployment, shared_file
from geoembed.core.grids.h3 import region_cells
from geoembed.landcover.settings import load_settings
from geoembed.core.lineage import decode_version
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_resources import InferenceDevice

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_four_concurrent_runs_into_one_store_and_table_lose_and_duplicate_nothing(tmp_path, monkeypatch):
    shared_file("nlcd2011_zion.tif")
    product = REPO / "products" / "nlcd_zion.yaml"
    env = dagster_deployment(tmp_path, product, monkeypatch)
    data = Path(env["GEOEMBED_DATA_DIR"])
    settings = load_settings(product)
    name = settings.name
    resources = local_resources(data, inference_device=InferenceDevice(device="cpu"))
    assets = list(build_definitions([settings], resources).assets)
    key = lambda asset: dg.AssetKey([name, asset])  # noqa: E731
    with dg.DagsterInstance.get() as instance:
        dg.materialize(assets, selection=[key("h3_regions")], instance=instance, resources=resources)
        partitions = instance.get_dynamic_partitions(f"{name}_regions")
        assert len(partitions) == 4
        dg.materialize(assets, selection=[key("landcover_samples")], instance=instance, resources=resources,
                       tags={ASSET_PARTITION_RANGE_START_TAG: partitions[0], ASSET_PARTITION_RANGE_END_TAG: partitions[-1]})
        dg.materialize(assets, selection=[key("embedding_model")], instance=instance, resources=resources,
                       run_config={"ops": {f"{name}__embedding_model": {"config": {"steps": 20, "batch_size": 64}}}})
        version = json.loads(resources["storage"].current_model_path(name).read_text())["model_version"]

        # Four runs, one partition each, at once: separate processes (Dagster's own CLI) writing the
        # same Zarr store and the same PostgreSQL table. On a loaded machine a process can finish its short run
        # before the last one has imported Dagster: then the four are run again (rewriting the same partitions)
        # until they did overlap, at most three times.
        selection = f"{name}/cell_embeddings,{name}/embedding_table"
        for _ in range(3):
            seen = {r.dagster_run.run_id for r in instance.get_run_records()}
            procs = [subprocess.Popen([str(BIN / "dagster"), "asset", "materialize", "-m", "geoembed_assets.definitions",
                                       "--select", selection, "--partition", p], cwd=REPO, env={**os.environ, **env},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for p in partitions]
            outputs = [proc.communicate(timeout=600)[0] for proc in procs]
            for proc, out in zip(procs, outputs):
                assert proc.returncode == 0, out[-3000:]
            records = [r for r in instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
                       if r.dagster_run.run_id not in seen and r.dagster_run.tags.get("dagster/partition") in partitions]
            assert len(records) == 4
            # They ran at the same time when the last to start began before the first to end had finished.
            if max(r.start_time for r in records) < min(r.end_time for r in records):
                break
        else:
            pytest.fail("the four runs never overlapped in three attempts: the machine ran them one after another")
        ds = resources["storage"].open_product(name).load()
        cells = ds["cell_ids"].values
        assert len(np.unique(cells)) == len(cells) == sum(len(region_cells(int(p, 16), 7)) for p in partitions)
        embedded = np.isin(ds["status"].values, [0, 1, 2])
        assert embedded.sum() > 0
        assert not np.isnan(ds["embedding"].values[embedded]).any()
        assert {decode_version(v) for v in ds["model_version"].values[embedded]} == {version}
        with resources["database"].connect(read_only=True) as conn:
            table = conn.execute("SELECT table_name FROM geoembed.model_tables WHERE product = %s AND model_version = %s",
                                 (name, version)).fetchone()[0]
            per_region = dict(conn.execute(f'SELECT region, count(*) FROM geoembed."{table}" GROUP BY 1').fetchall())
            total, distinct = conn.execute(f'SELECT count(*), count(DISTINCT h3) FROM geoembed."{table}"').fetchone()
            stored = dict(conn.execute(f'SELECT h3, embedding FROM geoembed."{table}"').fetchall())
        assert total == distinct == int(embedded.sum())
        for p in partitions:
            in_region = np.isin(cells, region_cells(int(p, 16), 7))
            assert per_region[int(p, 16)] == int((embedded & in_region).sum())
        # What the table holds is exactly what the store holds.
        for cell, vector in zip(cells[embedded], ds["embedding"].values[embedded]):
            np.testing.assert_allclose(stored[int(np.int64(cell))].to_numpy(), vector, rtol=0, atol=1e-6)
