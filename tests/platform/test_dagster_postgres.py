"""Dagster's own storage on PostgreSQL (dagster-postgres) with the documented deploy/dagster.postgres.yaml,
against a real server (the embedded one)."""

import shutil

import dagster as dg
import numpy as np
import psycopg
import pytest
from rasterio.transform import from_origin

from conftest import REPO, write_raster
from geoembed.landcover.settings import settings_from_mapping
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_resources import InferenceDevice
from geoembed_resources.postgres import embedded_dsn

pytestmark = pytest.mark.integration


def test_runs_and_events_are_stored_in_postgres(tmp_path, monkeypatch):
    admin = embedded_dsn(tmp_path / "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE dagster")
    url = admin.replace("/postgres?", "/dagster?")
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")

    data = np.where(np.arange(64)[None, :] < 32, 1, 2).repeat(64, axis=0).astype(np.uint8)
    raster = write_raster(tmp_path / "lc.tif", data, from_origin(10.0, 1.0, 0.01, 0.01), nodata=0)
    settings = settings_from_mapping({"name": "pgstore", "raster": str(raster), "legend": {1: "a", 2: "b"},
                                      "resolution": 7, "region_resolution": 5, "window_size": 8, "embedding_dim": 8})
    resources = local_resources(tmp_path / "data", inference_device=InferenceDevice(device="cpu"))
    assets = list(build_definitions([settings], resources).assets)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize(assets, selection=[dg.AssetKey(["pgstore", "h3_regions"])], instance=instance,
                                resources=resources)
        assert result.success
        key = instance.get_dynamic_partitions("pgstore_regions")[0]
        dg.materialize(assets, selection=[dg.AssetKey(["pgstore", "landcover_samples"])], instance=instance,
                       resources=resources, partition_key=key)
        assert instance.get_materialized_partitions(dg.AssetKey(["pgstore", "landcover_samples"])) == {key}
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
                            ).fetchone()[0] == 2
