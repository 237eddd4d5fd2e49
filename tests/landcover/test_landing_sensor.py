"""The landing sensor end to end with the real Dagster daemon: land WorldCover files beside the 2020
tile and exactly the partitions they cover re-run, through the daemon's sensor and run queue."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import h3.api.basic_int as h3i
import numpy as np
import pytest
import rasterio
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from rasterio.windows import from_bounds

from geoembed.core import sources
from geoembed.core.grids.h3 import cell_centres, region_cells
from geoembed.landcover.settings import load_settings
from geoembed.core.lineage import decode_version
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.landcover.sensors import LANDING_TAG, landing_sensor_name
from geoembed_resources import ProductStorage

from conftest import REPO, dagster_deployment, shared_file

pytestmark = pytest.mark.integration

NAME = "wc_landing"
PRINCIPE = (7.2, 1.4, 7.6, 1.8)  # west, south, east, north: Príncipe island, north of São Tomé
BIN = Path(sys.executable).parent


def _write_window(source: Path, target: Path, bounds: tuple[float, float, float, float]) -> tuple:
    """A window of a real raster, same grid and tags (a smaller file landing for part of the tile)."""
    with rasterio.open(source) as src:
        window = from_bounds(*bounds, src.transform).round_offsets().round_lengths()
        profile = {**src.profile, "width": window.width, "height": window.height, "driver": "GTiff",
                   "transform": src.window_transform(window), "tiled": True, "blockxsize": 512, "blockysize": 512,
                   "compress": "deflate"}
        tmp = target.with_name(f".{target.name}.part")  # dot files are ignored: land it whole
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(src.read(1, window=window), 1)
            dst.update_tags(**src.tags())
        os.replace(tmp, target)
        return rasterio.windows.bounds(window, src.transform)


def _land(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _regions_with_centres_in(partitions: list[str], bounds: tuple) -> set[str]:
    west, south, east, north = bounds
    hit = set()
    for key in partitions:
        lat, lon = cell_centres(region_cells(int(key, 16), 7))
        if ((lon >= west) & (lon < east) & (lat > south) & (lat <= north)).any():
            hit.add(key)
    return hit


class Daemon:
    """`dagster-daemon run` on the test's instance and workspace (sensors, run queue)."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        self.proc = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
                                     cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def tail(self) -> str:
        return self.log.read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _wait(condition, what: str, daemon: Daemon, timeout: float = 240.0, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert daemon.proc.poll() is None, f"the daemon exited:\n{daemon.tail()}"
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}\n{daemon.tail()}")


def _sensor_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={LANDING_TAG: landing_sensor_name(NAME)})))


def _settled(instance: dg.DagsterInstance, expected_runs: int):
    """All sensor-requested runs so far finished (and at least ``expected_runs`` of them)."""
    runs = _sensor_runs(instance)
    if len(runs) < expected_runs or any(not r.is_finished for r in runs):
        return None
    failed = [r for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
    assert not failed, f"sensor runs failed: {[(r.run_id, r.status) for r in failed]}"
    return runs


def _stencil_runs(instance) -> int:
    return sum(1 for r in _sensor_runs(instance) if ASSET_PARTITION_RANGE_START_TAG not in r.tags
               and "dagster/partition" not in r.tags)


def _refreshed_partitions(instance: dg.DagsterInstance, after_id: int) -> tuple[set[str], int]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey([NAME, "cell_embeddings"]), after_storage_id=after_id),
        limit=10_000).records
    return {r.partition_key for r in records}, max([after_id, *(r.storage_id for r in records)])


def _product(storage: ProductStorage) -> dict[str, np.ndarray]:
    ds = storage.open_product(NAME).load()
    cells = ds["cell_ids"].values
    regions = np.array([f"{h3i.cell_to_parent(int(c), 5):x}" for c in cells])
    return {"cells": cells, "regions": regions, "embedding": ds["embedding"].values,
            "source": ds["source_version"].values, "status": ds["status"].values}


def _expect_refresh(instance, daemon, storage, runs_before: int, stencils_before: int, mark: int, expected: set[str]):
    """Wait for one stencil run and the refresh runs it leads to; return the partitions refreshed."""
    _wait(lambda: _stencil_runs(instance) > stencils_before, "the stencil run the sensor requests", daemon)
    _wait(lambda: _settled(instance, runs_before + 1 + (1 if expected else 0)) and
          _refreshed_partitions(instance, mark)[0] >= expected, f"refresh runs of {sorted(expected)}", daemon)
    _wait(lambda: _settled(instance, 0), "every sensor run to finish", daemon)
    return _refreshed_partitions(instance, mark)


@pytest.fixture
def landing_product(tmp_path, monkeypatch):
    tile_2020 = shared_file("ESA_WorldCover_10m_2020_v100_N00E006_Map.tif")
    tile_2021 = shared_file("ESA_WorldCover_10m_2021_v200_N00E006_Map.tif")
    landing = tmp_path / "landing"
    landing.mkdir()
    _land(tile_2020, landing / tile_2020.name)
    product = tmp_path / f"{NAME}.yaml"
    product.write_text(yaml.safe_dump({
        "name": NAME, "landing": str(landing), "landing_pattern": "ESA_WorldCover_*.tif", "legend": "tag:legend",
        "background_classes": [80], "resolution": 7, "region_resolution": 5, "window_size": 32,
        "embedding_dim": 16, "landing_check_seconds": 2,
    }))
    env = dagster_deployment(tmp_path, product, monkeypatch)
    data = Path(env["GEOEMBED_DATA_DIR"])
    settings = load_settings(product)
    resources = local_resources(data)
    return settings, resources, landing, tile_2021, {**os.environ, **env}, tmp_path


def test_landing_sensor_refreshes_exactly_the_partitions_new_files_cover(landing_product):
    settings, resources, landing, tile_2021, env, tmp_path = landing_product
    storage = resources["storage"]
    assets = list(build_definitions([settings], resources).assets)
    key = lambda asset: dg.AssetKey([NAME, asset])  # noqa: E731
    with dg.DagsterInstance.get() as instance:
        # The product as it stands before anything new lands: built from the 2020 tile.
        dg.materialize(assets, selection=[key("h3_regions")], instance=instance, resources=resources)
        partitions = instance.get_dynamic_partitions(f"{NAME}_regions")
        everything = {ASSET_PARTITION_RANGE_START_TAG: partitions[0], ASSET_PARTITION_RANGE_END_TAG: partitions[-1]}
        dg.materialize(assets, selection=[key("landcover_samples")], instance=instance, resources=resources,
                       tags=everything)
        dg.materialize(assets, selection=[key("embedding_model")], instance=instance, resources=resources,
                       run_config={"ops": {f"{NAME}__embedding_model": {"config": {"steps": 30, "batch_size": 64}}}})
        dg.materialize(assets, selection=[key("cell_embeddings"), key("embedding_table")], instance=instance,
                       resources=resources, tags=everything)
        initial = _product(storage)
        _, mark = _refreshed_partitions(instance, 0)

        subprocess.run([str(BIN / "dagster"), "sensor", "start", landing_sensor_name(NAME), "-w",
                        str(REPO / "workspace.yaml")], cwd=REPO, env=env, check=True, capture_output=True)
        daemon = Daemon(env, tmp_path / "daemon.log")
        try:
            # 1. A 2021 file covering only Príncipe lands beside the 2020 tile.
            crop = landing / "ESA_WorldCover_10m_2021_v200_N00E006_principe.tif"
            crop_bounds = _write_window(tile_2021, crop, PRINCIPE)
            expected = _regions_with_centres_in(partitions, crop_bounds)
            assert expected and len(expected) < len(partitions)
            refreshed, mark = _expect_refresh(instance, daemon, storage, 0, 0, mark, expected)
            assert refreshed == expected
            after = _product(storage)
            crop_version = sources.file_version(sources.list_local(landing, crop.name)[0])
            touched = np.isin(after["regions"], sorted(expected))
            assert np.array_equal(after["embedding"][~touched], initial["embedding"][~touched], equal_nan=True)
            assert np.array_equal(after["source"][~touched], initial["source"][~touched])
            assert not np.array_equal(after["embedding"][touched], initial["embedding"][touched], equal_nan=True)
            assert crop_version in {decode_version(v) for v in after["source"][touched]}
            with resources["database"].connect(read_only=True) as conn:
                table = conn.execute("SELECT table_name FROM geoembed.model_tables WHERE product = %s",
                                     (NAME,)).fetchone()[0]
                by_source = dict(conn.execute(
                    f'SELECT source_version, count(*) FROM geoembed."{table}" GROUP BY 1').fetchall())
            assert by_source.get(crop_version, 0) > 0

            # 2. The whole 2021 tile lands: every partition it covers (all of them) re-runs.
            runs_so_far, stencils = len(_sensor_runs(instance)), _stencil_runs(instance)
            _land(tile_2021, landing / tile_2021.name)
            refreshed, mark = _expect_refresh(instance, daemon, storage, runs_so_far, stencils, mark, set(partitions))
            assert refreshed == set(partitions)
            latest = _product(storage)
            embedded = np.isin(latest["status"], [0, 1, 2])
            assert not np.array_equal(latest["embedding"][embedded & ~touched], initial["embedding"][embedded & ~touched])

            # 3. Touching a file without changing it triggers nothing (the cursor keeps content versions).
            runs_so_far = len(_sensor_runs(instance))
            os.utime(crop, ns=(time.time_ns(), time.time_ns()))
            new_fingerprint = sources.list_local(landing, crop.name)[0].fingerprint
            _wait(lambda: _cursor(instance).get(crop.name, ("",))[0] == new_fingerprint,
                  "the sensor to see the touched file", daemon)
            assert len(_sensor_runs(instance)) == runs_so_far

            # 4. Removing a file is reported, and the cells it provided fall back to the 2021 tile.
            runs_so_far, stencils = len(_sensor_runs(instance)), _stencil_runs(instance)
            crop.unlink()
            refreshed, mark = _expect_refresh(instance, daemon, storage, runs_so_far, stencils, mark, expected)
            assert refreshed == expected
            observation = instance.fetch_observations(key("landcover_source"), limit=1).records[0]
            assert observation.asset_observation.metadata["removed"].value == [crop.name]
            assert crop_version not in {decode_version(v) for v in _product(storage)["source"]}
        finally:
            daemon.stop()


def _cursor(instance: dg.DagsterInstance) -> dict:
    for state in instance.all_instigator_state():
        if state.name == landing_sensor_name(NAME) and state.instigator_data and state.instigator_data.cursor:
            return sources.decode_cursor(state.instigator_data.cursor)[0]
    return {}
