"""Window extraction checked against direct rasterio reads on real data, and at the antimeridian
and the poles on a generated global grid."""

import h3.api.basic_int as h3i
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from conftest import write_raster
from geoembed.core.grids.h3 import cell_centres, region_cells
from geoembed.landcover.categorical import describe_raster, parse_legend_text, resolve_legend
from geoembed.landcover.windows import (
    STATUS_CODE,
    Legend,
    RasterBlocks,
    has_foreground,
    pixel_positions,
    sample_windows,
)
from geoembed.landcover.settings import settings_from_mapping


def _sample(path, cells, size, legend=None, min_valid=0.5, flag_unknown=False, cache_pixels=64_000_000):
    info = describe_raster(str(path))
    with rasterio.open(path) as src:
        if legend is None:
            legend = Legend.from_mapping({int(v): str(v) for v in np.unique(src.read(1)) if v != info.nodata})
        lat, lon = cell_centres(cells)
        samples = sample_windows(RasterBlocks(src, cache_pixels), info, legend, cells, lat, lon, size, min_valid,
                                 flag_unknown)
    return info, legend, samples


def _direct_windows(path, info, legend, cells, size):
    """The same windows with rasterio's own boundless windowed read, one cell at a time."""
    lat, lon = cell_centres(cells)
    row, col = pixel_positions(info, lat, lon)
    half = size // 2
    out = []
    with rasterio.open(path) as src:
        for r, c in zip(np.round(row).astype(int), np.round(col).astype(int)):
            raw = src.read(1, window=Window(c - half, r - half, size, size), boundless=True,
                           fill_value=info.nodata if info.nodata is not None else 0).astype(np.int64)
            idx, known = legend.indices(raw)
            valid = known & (raw != info.nodata)
            out.append(np.where(valid, idx, legend.nodata_index))
    return np.array(out, dtype=np.uint8)


@pytest.mark.parametrize("cache_pixels", [64_000_000, 0], ids=["cached", "block-reads"])
def test_windows_match_rasterio_reads_on_nlcd(nlcd_zion, cache_pixels):
    cells = region_cells(h3i.latlng_to_cell(37.25, -113.0, 5), 7)  # inside the raster, projected CRS
    info, legend, samples = _sample(nlcd_zion, cells, 32, cache_pixels=cache_pixels)
    assert info.crs.to_epsg() == 6367
    np.testing.assert_array_equal(samples.windows, _direct_windows(nlcd_zion, info, legend, cells, 32))
    assert (samples.status == STATUS_CODE["ok"]).all()
    np.testing.assert_allclose(samples.fractions.sum(axis=1), 1.0, rtol=1e-5)


def test_windows_match_rasterio_reads_on_worldcover_coast(worldcover_2020):
    # Sao Tome's coast: land, water and the tile's own data; block reads of a 36000 x 36000 COG.
    cells = region_cells(h3i.latlng_to_cell(0.33, 6.73, 6), 9)
    legend = Legend.from_mapping(parse_legend_text(rasterio.open(worldcover_2020).tags()["legend"]))
    info, legend, samples = _sample(worldcover_2020, cells, 16, legend=legend, cache_pixels=0)
    np.testing.assert_array_equal(samples.windows, _direct_windows(worldcover_2020, info, legend, cells, 16))
    assert len(set(samples.dominant.tolist())) > 1


def test_cells_at_the_raster_edge_and_outside_are_kept_with_a_reason(nlcd_zion):
    info = describe_raster(str(nlcd_zion))
    # A res-4 region around Zion reaches far past this small raster.
    cells = region_cells(h3i.latlng_to_cell(37.3, -113.0, 4), 7)
    _, _, samples = _sample(nlcd_zion, cells, 32)
    assert len(samples.status) == len(cells)
    statuses = set(samples.status.tolist())
    assert {STATUS_CODE["ok"], STATUS_CODE["outside_raster"]} <= statuses
    outside = samples.status == STATUS_CODE["outside_raster"]
    assert (samples.valid_fraction[outside] == 0).all() and (samples.dominant[outside] == -1).all()
    assert info.nodata == 255


def test_antimeridian_windows_wrap(global_raster):
    cells = np.array([h3i.latlng_to_cell(0.2, 179.9, 5), h3i.latlng_to_cell(-10.0, -179.95, 5)], dtype=np.uint64)
    info, legend, samples = _sample(global_raster, cells, 8)
    assert info.is_global_geographic
    lat, lon = cell_centres(cells)
    row, col = pixel_positions(info, lat, lon)
    for i in range(len(cells)):
        rows = np.round(row[i]).astype(int) - 4 + np.arange(8)
        cols = (np.round(col[i]).astype(int) - 4 + np.arange(8)) % 360
        expected = (rows[:, None] % 10) * 10 + (cols[None, :] % 10)
        assert (legend.values[samples.windows[i]] == expected).all()
    assert (samples.status == STATUS_CODE["ok"]).all()  # no edge: the grid has no east or west edge


def test_pole_windows_reflect_over_the_pole(global_raster):
    cells = np.array([h3i.latlng_to_cell(89.5, 30.0, 3), h3i.latlng_to_cell(-89.2, -100.0, 3)], dtype=np.uint64)
    info, legend, samples = _sample(global_raster, cells, 8)
    lat, lon = cell_centres(cells)
    row, col = pixel_positions(info, lat, lon)
    for i in range(len(cells)):
        rows = np.round(row[i]).astype(int) - 4 + np.arange(8)
        cols = np.round(col[i]).astype(int) - 4 + np.arange(8)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        over = (rr < 0) | (rr >= 180)
        rr = np.where(rr < 0, -1 - rr, np.where(rr >= 180, 359 - rr, rr))
        cc = np.where(over, cc + 180, cc) % 360
        assert over.any()
        assert (legend.values[samples.windows[i]] == (rr % 10) * 10 + (cc % 10)).all()
    assert (samples.status == STATUS_CODE["ok"]).all()


def test_statuses_nodata_unknown_and_fractions(tmp_path):
    data = np.full((40, 40), 1, dtype=np.uint8)
    data[:, 20:] = 2
    data[:20, :20] = 0  # nodata quadrant
    data[30:, 30:] = 9  # a value outside the legend
    path = write_raster(tmp_path / "s.tif", data, from_origin(10.0, 1.0, 0.025, 0.025), nodata=0)
    legend = Legend.from_mapping({1: "one", 2: "two"})
    cells = np.array([h3i.latlng_to_cell(lat, lon, 7) for lat, lon in
                      [(0.75, 10.25), (0.5, 10.5), (0.2, 10.8), (0.1, 12.0)]], dtype=np.uint64)
    _, _, samples = _sample(path, cells, 8, legend=legend, flag_unknown=True)
    assert samples.status[0] == STATUS_CODE["all_nodata"]
    assert samples.status[1] == STATUS_CODE["partial_nodata"]
    assert samples.status[2] == STATUS_CODE["unknown_class"]
    assert samples.status[3] == STATUS_CODE["outside_raster"]
    assert samples.unknown_values.tolist() == [9]
    np.testing.assert_allclose(samples.fractions[1].sum(), 1.0, rtol=1e-6)
    foreground = has_foreground(samples, legend, background_values=[2])
    assert foreground.tolist() == [False, True, False, False]


def test_legend_from_tag_and_from_distinct_values(worldcover_2020, tmp_path):
    settings = settings_from_mapping({"name": "wc", "raster": str(worldcover_2020), "legend": "tag:legend",
                                      "resolution": 8})
    legend = resolve_legend(settings)
    assert legend[10] == "Tree cover" and legend[95] == "Mangroves" and len(legend) == 11
    data = np.array([[3, 5], [5, 7]], dtype=np.uint8)
    path = write_raster(tmp_path / "v.tif", data, from_origin(0, 1, 0.5, 0.5))
    auto = settings_from_mapping({"name": "v", "raster": str(path), "resolution": 5})
    assert resolve_legend(auto, np.array([3, 5, 7])) == {3: "3", 5: "5", 7: "7"}
