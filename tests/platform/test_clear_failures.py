"""Every failure a clear message: `geoembed run` on bad inputs prints one line naming the input and the
problem (no traceback, no pages of Dagster log before it), and keeps what was already materialized."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import REPO, write_raster
from geoembed.core.rasters import RasterInputError
from geoembed.landcover.windows import RasterBlocks


def _truncated_geotiff(path: Path) -> Path:
    """A tiled, compressed GeoTIFF cut after a third of its bytes: the header opens, the pixels do not."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 5, (512, 512), dtype=np.uint8)
    profile = dict(driver="GTiff", width=512, height=512, count=1, dtype="uint8", crs="EPSG:4326",
                   transform=from_origin(10.0, 1.0, 0.001, 0.001), nodata=0, tiled=True, blockxsize=128,
                   blockysize=128, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    return path


def _geoembed(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoembed.cli", *args], capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})}, cwd=cwd)


def _one_clear_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "BetaWarning" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("geoembed: ")]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr[-3000:]
    return lines[0]


def test_pixels_that_cannot_be_read_name_the_file(tmp_path):
    path = _truncated_geotiff(tmp_path / "cut.tif")
    with rasterio.open(path) as src:  # the header opens
        with pytest.raises(RasterInputError, match=r"raster .*cut\.tif.* cannot be read"):
            RasterBlocks(src, cache_pixels=0).gather(np.array([[500]]), np.array([[500]]), np.array([[True]]), 0)


@pytest.mark.integration
def test_run_on_a_truncated_geotiff_is_one_line(tmp_path):
    path = _truncated_geotiff(tmp_path / "cut.tif")
    product = tmp_path / "cut.yaml"
    product.write_text(f"name: cut\nraster: {path}\nresolution: 6\nregion_resolution: 3\nlegend: "
                       "{1: a, 2: b, 3: c, 4: d}\n")
    result = _geoembed("run", "--product", str(product), "--data-dir", str(tmp_path / "data"),
                       "--dagster-home", str(tmp_path / "home"))
    _one_clear_line(result, "cut.tif", "cannot be read")


@pytest.mark.integration  # a real Dagster CLI or server process (~7-9 s): out of the fast subset
def test_a_binary_product_file_is_one_line(tmp_path):
    binary = tmp_path / "product.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    _one_clear_line(_geoembed("run", "--product", str(binary)), "product.yaml", "not a text")
    png = tmp_path / "map.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    _one_clear_line(_geoembed("run", "--product", str(png)), "map.png")


@pytest.mark.integration  # a real Dagster CLI or server process (~7-9 s): out of the fast subset
def test_the_dagster_home_flag_wins_over_the_environment(tmp_path):
    product = tmp_path / "p.yaml"
    product.write_text("name: p\nraster: missing.tif\nresolution: 5\n")
    result = _geoembed("run", "--product", str(product), "--dagster-home", str(tmp_path / "flag"),
                       "--data-dir", str(tmp_path / "data"), env={"DAGSTER_HOME": str(tmp_path / "environment")})
    _one_clear_line(result, "missing.tif", "does not exist")
    assert f"Dagster instance: {tmp_path / 'flag'}" in result.stdout
    assert (tmp_path / "flag" / "dagster.yaml").exists() and not (tmp_path / "environment").exists()
    assert any((tmp_path / "flag").rglob("*.db"))  # the failed run is recorded in the flag's instance


@pytest.mark.integration
def test_a_database_that_stays_unreachable_is_one_line_after_the_retries(tmp_path, nlcd_zion):
    """GEOEMBED_PG_DSN names a loopback port nobody listens on: everything before the table is made, the
    table step is retried by its policy and then reported as the resource says it, not as Dagster's
    'Exceeded max_retries'."""
    from geoembed.core.backfill import free_port

    dsn = f"postgresql://geoembed@127.0.0.1:{free_port()}/geoembed"
    result = _geoembed("run", "--product", str(REPO / "products" / "nlcd_zion.yaml"), "--steps", "5",
                       "--data-dir", str(tmp_path / "data"), "--dagster-home", str(tmp_path / "home"),
                       env={"GEOEMBED_PG_DSN": dsn, "GEOEMBED_RETRY_DELAY_SECONDS": "0.2"})
    line = _one_clear_line(result, "PostgreSQL at", "unreachable after")
    assert "max_retries" not in result.stderr and "127.0.0.1" in line
    assert (tmp_path / "data" / "nlcd_zion" / "embeddings.zarr").exists()  # what was made is kept


@pytest.mark.integration
def test_run_against_an_external_postgresql(tmp_path, nlcd_zion):
    """The production path: GEOEMBED_PG_DSN names the server (the PostGIS test server when provisioned,
    else a PostgreSQL this test starts); the run completes, says where the table is, and the CLI search
    finds it there."""
    from geoembed_resources.postgres import embedded_dsn

    dsn = os.environ.get("GEOEMBED_TEST_POSTGIS_DSN") or embedded_dsn(tmp_path / "server")
    env = {"GEOEMBED_PG_DSN": dsn}
    result = _geoembed("run", "--product", str(REPO / "products" / "nlcd_zion.yaml"), "--steps", "5",
                       "--data-dir", str(tmp_path / "data"), "--dagster-home", str(tmp_path / "home"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    table_line = next(line for line in result.stdout.splitlines() if "PostgreSQL table" in line)
    assert "geoembed.nlcd_zion_" in table_line and "password" not in table_line
    assert not (tmp_path / "data" / "postgres").exists()  # the embedded default was not used
    found = _geoembed("similar", "--product", "nlcd_zion", "--lonlat", "-113.0", "37.25", "-k", "3", env=env)
    assert found.returncode == 0 and "3 cells most similar" in found.stdout, found.stderr[-2000:]


@pytest.mark.integration
def test_a_product_too_small_to_evaluate_is_flagged(tmp_path):
    """A raster holding a handful of valid cells: the model is trained, but the run says loudly that its
    figures mean nothing and the asset check enough_data_to_evaluate fails."""
    import dagster as dg

    from geoembed.landcover.settings import load_settings
    from geoembed_assets.definitions import local_resources
    from geoembed_assets.landcover.job import materialize_product
    from geoembed_resources import InferenceDevice

    data = np.zeros((60, 60), np.uint8)
    data[20:40, 20:40] = np.random.default_rng(0).integers(1, 3, (20, 20))
    raster = write_raster(tmp_path / "tiny.tif", data, from_origin(10.0, 1.0, 0.002, 0.002), nodata=0)
    product = tmp_path / "tiny.yaml"
    product.write_text(f"name: tiny\nraster: {raster}\nresolution: 7\nregion_resolution: 4\nwindow_size: 8\n"
                       "embedding_dim: 8\nlegend: {1: a, 2: b}\n")
    said: list[str] = []
    resources = local_resources(tmp_path / "data", inference_device=InferenceDevice(device="cpu"))
    config = {"ops": {"tiny__embedding_model": {"config": {"steps": 5, "batch_size": 8}}}}
    with dg.instance_for_test() as instance:
        materialize_product(load_settings(product), instance, resources, run_config=config, say=said.append)
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(["tiny", "embedding_model"]), "enough_data_to_evaluate")])
    warnings = [line for line in said if "WARNING" in line]
    assert warnings and "to train on" in warnings[0]
    assert list(check.values())[0].status.value == "FAILED"


@pytest.mark.integration
def test_a_bad_product_file_in_the_code_location_is_one_message(tmp_path):
    """What `dagster dev` (and every Dagster tool loading the code location) shows: the file and the
    problem, with no frame of ours but the one that re-raises it."""
    binary = tmp_path / "product.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    result = subprocess.run([str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m",
                             "geoembed_assets.definitions"], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "GEOEMBED_PRODUCT": str(binary)})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"ProductConfigError: product settings file '{binary}' is not a text (UTF-8) file" in output
    frames = [line for line in output.splitlines() if line.strip().startswith('File "')]
    assert len(frames) == 1 and "geoembed_assets/definitions.py" in frames[0], frames


@pytest.mark.integration  # a real Dagster CLI or server process (~7-9 s): out of the fast subset
def test_search_on_a_database_nothing_was_loaded_into_is_one_line(tmp_path):
    result = _geoembed("similar", "--product", "modis_global", "--cell", "8428309ffffffff", "--data-dir", str(tmp_path),
                       env={"GEOEMBED_PG_DSN": ""})
    _one_clear_line(result, "no product has been loaded", "modis_global")
