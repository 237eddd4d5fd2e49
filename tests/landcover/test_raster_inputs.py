"""Bad rasters fail with a message naming the input and the problem."""

import numpy as np
import pytest
from rasterio.transform import from_origin

from conftest import write_raster
from geoembed.core.lineage import content_version
from geoembed.core.rasters import RasterInputError
from geoembed.landcover.categorical import describe_raster, resolve_legend
from geoembed.landcover.settings import settings_from_mapping


def test_missing_file(tmp_path):
    with pytest.raises(RasterInputError, match="nope.tif.*does not exist"):
        describe_raster(str(tmp_path / "nope.tif"))


def test_not_a_raster(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not a GeoTIFF")
    with pytest.raises(RasterInputError, match="notes.tif.*cannot be read"):
        describe_raster(str(path))


def test_multiband(tmp_path):
    path = write_raster(tmp_path / "rgb.tif", np.zeros((3, 4, 4), np.uint8), from_origin(0, 1, 0.1, 0.1))
    with pytest.raises(RasterInputError, match="rgb.tif.*3 bands"):
        describe_raster(str(path))


def test_float(tmp_path):
    path = write_raster(tmp_path / "dem.tif", np.zeros((4, 4), np.float32), from_origin(0, 1, 0.1, 0.1))
    with pytest.raises(RasterInputError, match="dem.tif.*float32.*integer"):
        describe_raster(str(path))


def test_no_crs(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", np.zeros((4, 4), np.uint8), from_origin(0, 1, 0.1, 0.1), crs=None)
    with pytest.raises(RasterInputError, match="nocrs.tif.*no CRS"):
        describe_raster(str(path))


def test_legend_errors(tmp_path):
    path = write_raster(tmp_path / "lc.tif", np.ones((4, 4), np.uint8), from_origin(0, 1, 0.1, 0.1))
    settings = settings_from_mapping({"name": "t", "raster": str(path), "legend": "tag:legend", "resolution": 5})
    with pytest.raises(RasterInputError, match="lc.tif.*no metadata tag 'legend'"):
        resolve_legend(settings)
    settings = settings_from_mapping({"name": "t", "raster": str(path), "legend": "no-such-legend", "resolution": 5})
    with pytest.raises(RasterInputError, match="no-such-legend"):
        resolve_legend(settings)


def test_content_version_follows_the_bytes(tmp_path):
    path = write_raster(tmp_path / "a.tif", np.ones((4, 4), np.uint8), from_origin(0, 1, 0.1, 0.1))
    first = content_version(str(path))
    assert first == content_version(str(path))
    write_raster(path, np.full((4, 4), 2, np.uint8), from_origin(0, 1, 0.1, 0.1))
    assert content_version(str(path)) != first
