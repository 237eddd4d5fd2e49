"""Several sources stacked on one footprint: each stacked source's window covers the same ground as the
primary's, checked against direct rasterio reads in each raster's own CRS; continuous normalisation;
the 'missing_<source>' statuses; the encoder's multi-source input."""

import h3.api.basic_int as h3i
import numpy as np
import pytest
import rasterio
import torch
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from conftest import SHARED_DATA, shared_file, write_raster
from geoembed.core.grids.h3 import cell_centres, region_cells
from geoembed.core.settings import ProductConfigError
from geoembed.landcover import encoder
from geoembed.landcover.categorical import describe_raster, parse_legend_text
from geoembed.landcover.settings import settings_from_mapping
from geoembed.landcover.windows import (
    EMBEDDED, STATUS_CODE, Legend, RasterBlocks, apply_missing_sources, cell_statuses, pixel_positions,
    sample_stacked, sample_windows, window_ground_points,
)


@pytest.fixture
def srtm_zion():
    path = SHARED_DATA / "elevation" / "srtm_zion.tif"
    if not path.exists():
        pytest.skip(f"real data {path} is absent (../shared/data is not beside this checkout)")
    return path


def _zion_cells():
    return region_cells(h3i.latlng_to_cell(37.25, -113.0, 5), 7)  # well inside both rasters


def _stack_on_nlcd(nlcd, stacked_path, kind, cells, size=32, legend=None):
    primary = describe_raster(str(nlcd))
    source = describe_raster(str(stacked_path), kind=kind)
    lat, lon = cell_centres(cells)
    with rasterio.open(stacked_path) as src:
        return primary, source, sample_stacked("s", kind, RasterBlocks(src), source, primary, lat, lon, size, legend)


def test_elevation_window_is_read_at_the_ground_points_of_the_landcover_window(nlcd_zion, srtm_zion):
    """Every pixel of the stacked SRTM window (EPSG:4326, ~90 m) is the SRTM pixel holding the centre of
    the NLCD window's pixel at the same place (UTM, ~31.5 m): rasterio's own xy, transform and index."""
    cells = _zion_cells()[:12]
    primary, source, stacked = _stack_on_nlcd(nlcd_zion, srtm_zion, "continuous", cells)
    lat, lon = cell_centres(cells)
    row, col = pixel_positions(primary, lat, lon)
    with rasterio.open(nlcd_zion) as nlcd, rasterio.open(srtm_zion) as srtm:
        elevation = srtm.read(1)
        for i, (r0, c0) in enumerate(zip(np.round(row).astype(int), np.round(col).astype(int))):
            rows, cols = np.meshgrid(np.arange(r0 - 16, r0 + 16), np.arange(c0 - 16, c0 + 16), indexing="ij")
            xs, ys = nlcd.xy(rows.ravel(), cols.ravel())  # pixel centres in UTM
            lons, lats = warp_transform(nlcd.crs, srtm.crs, xs, ys)
            hit = [srtm.index(x, y) for x, y in zip(lons, lats)]
            direct = np.array([elevation[r, c] for r, c in hit], dtype=np.float32).reshape(32, 32)
            np.testing.assert_array_equal(stacked.values[i], direct)
    assert (stacked.valid_fraction == 1).all()
    assert 1000 < np.nanmean(stacked.values) < 2700  # metres: Zion's canyons and plateaus


def test_stacked_windows_cover_the_same_ground(nlcd_zion, srtm_zion):
    """The stacked window's corners lie where the primary window's corners are, to within one stacked pixel."""
    cells = _zion_cells()[:5]
    primary, source, _ = _stack_on_nlcd(nlcd_zion, srtm_zion, "continuous", cells)
    x, y = window_ground_points(primary, *cell_centres(cells), 32)
    corners_x, corners_y = x[:, [0, 0, -1, -1], [0, -1, 0, -1]], y[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    lon, lat = warp_transform(primary.crs, "EPSG:4326", corners_x.ravel().tolist(), corners_y.ravel().tolist())
    with rasterio.open(srtm_zion) as srtm:
        centres = [srtm.xy(*srtm.index(a, b)) for a, b in zip(lon, lat)]
    gap = np.abs(np.array(centres) - np.column_stack([lon, lat]))
    assert (gap <= np.array(srtm.res) / 2 + 1e-9).all()
    # ~1 km across: the window spans 31 primary pixels between its corner pixel centres.
    assert np.allclose(corners_x[:, 1] - corners_x[:, 0], 31 * primary.transform.a)


def test_categorical_stack_on_the_same_grid_equals_direct_reads(worldcover_2020):
    """WorldCover 2021 stacked on 2020 (the same grid): its windows are exactly 2021's own windows."""
    wc2021 = shared_file("ESA_WorldCover_10m_2021_v200_N00E006_Map.tif")
    cells = region_cells(h3i.latlng_to_cell(0.33, 6.73, 6), 9)[:40]
    legend = Legend.from_mapping(parse_legend_text(rasterio.open(worldcover_2020).tags()["legend"]))
    primary = describe_raster(str(worldcover_2020))
    source = describe_raster(str(wc2021))
    lat, lon = cell_centres(cells)
    with rasterio.open(wc2021) as src:
        stacked = sample_stacked("wc2021", "categorical", RasterBlocks(src, 0), source, primary, lat, lon, 16, legend)
        direct = sample_windows(RasterBlocks(src, 0), source, legend, cells, lat, lon, 16, 0.5, False)
    np.testing.assert_array_equal(stacked.values, direct.windows)
    np.testing.assert_allclose(stacked.fractions, direct.fractions, atol=1e-6)
    np.testing.assert_allclose(stacked.valid_fraction, direct.valid_fraction)


def test_a_stacked_source_that_does_not_cover_a_cell_marks_it_missing(nlcd_zion, srtm_zion, tmp_path):
    """SRTM cut to its eastern half: cells in the west are valid land cover without elevation."""
    with rasterio.open(srtm_zion) as src:
        half = src.width // 2
        data = src.read(1, window=Window(half, 0, src.width - half, src.height))
        transform = src.window_transform(Window(half, 0, src.width - half, src.height))
        east = write_raster(tmp_path / "srtm_east.tif", data, transform, nodata=src.nodata)
        split_lon = transform.c
    cells = np.concatenate([region_cells(h3i.latlng_to_cell(37.3, lon_, 5), 7) for lon_ in (-113.15, -112.95)])
    primary, source, stacked = _stack_on_nlcd(nlcd_zion, east, "continuous", cells)
    legend = Legend.from_mapping({int(k): str(k) for k in range(256) if k != 255})
    lat, lon = cell_centres(cells)
    with rasterio.open(nlcd_zion) as src:
        base = sample_windows(RasterBlocks(src), primary, legend, cells, lat, lon, 32, 0.5, False)
    status = apply_missing_sources(base.status, [stacked], [0.5])
    names = cell_statuses(["elevation"])
    missing = status == names.index("missing_elevation")
    west = lon < split_lon - 0.01
    east_ = lon > split_lon + 0.01
    assert missing[west & np.isin(base.status, EMBEDDED)].all()
    assert not missing[east_].any()
    # Cells the primary source itself leaves without data keep their own reason.
    assert (status[~np.isin(base.status, EMBEDDED)] == base.status[~np.isin(base.status, EMBEDDED)]).all()
    assert np.isnan(stacked.values[missing]).all()


def test_robust_normalisation_ignores_outliers_and_nodata():
    rng = np.random.default_rng(0)
    values = rng.normal(1500.0, 200.0, size=(200, 1, 8, 8)).astype(np.float32)
    values[:5] = 1e6  # a few absurd windows
    values[10:20] = np.nan  # no data
    (centre,), (scale,) = encoder.robust_normalisation(values)
    assert abs(centre - 1500) < 15 and abs(scale - 200) < 15
    (_, ), (flat_scale,) = encoder.robust_normalisation(np.full((4, 1, 2, 2), 7.0, dtype=np.float32))
    assert flat_scale == 1.0


def _stacked_spec(**overrides):
    values = dict(n_tokens=5, window_size=32, embedding_dim=8, stacked_tokens=(4,), continuous_centre=(1500.0,),
                  continuous_scale=(200.0,))
    return encoder.EncoderSpec(**{**values, **overrides})


def test_stacked_encoder_reads_every_source():
    model = encoder.build_encoder(_stacked_spec(), 0).eval()
    rng = np.random.default_rng(0)
    x = np.zeros((6, 3, 32, 32), dtype=np.float32)
    x[:, 0] = rng.integers(0, 5, (6, 32, 32))
    x[:, 1] = rng.integers(0, 4, (6, 32, 32))
    x[:, 2] = rng.normal(1500, 200, (6, 32, 32))
    with torch.no_grad():
        z = model(torch.from_numpy(x))
        # Each source changes the embedding.
        for channel, value in ((1, 3.0), (2, 2500.0)):
            other = x.copy()
            other[:, channel] = value
            assert (model(torch.from_numpy(other)) - z).abs().max() > 1e-3
        # Invalid (NaN) measurements read as the median.
        gaps, median = x.copy(), x.copy()
        gaps[:, 2, :8] = np.nan
        median[:, 2, :8] = 1500.0
        torch.testing.assert_close(model(torch.from_numpy(gaps)), model(torch.from_numpy(median)))
    assert torch.isfinite(z).all() and np.allclose(z.norm(dim=1).numpy(), 1, atol=1e-5)
    reloaded, _ = encoder.load_checkpoint(encoder.save_checkpoint(model, {}))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(torch.from_numpy(x)), z)
    traced = torch.jit.load(__import__("io").BytesIO(encoder.export_torchscript(model)))
    torch.testing.assert_close(traced(torch.from_numpy(x)), z)


def test_pooled_token_sum_equals_embedding_every_pixel():
    """The scatter-add shortcut for K categorical sources equals embedding each pixel of each source,
    summing over sources and average-pooling."""
    model = encoder.build_encoder(_stacked_spec(continuous_centre=(), continuous_scale=()), 0)
    ids = torch.stack([torch.randint(0, 5, (3, 32, 32)), torch.randint(0, 4, (3, 32, 32))], dim=1)
    direct = model.tokens(ids + model.offsets.view(1, -1, 1, 1)).sum(1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.avg_pool2d(direct, model.pool)
    torch.testing.assert_close(model.embed_tokens(ids), expected, rtol=1e-5, atol=1e-6)


def test_a_single_source_spec_hashes_as_before():
    spec = encoder.EncoderSpec(n_tokens=18, window_size=32, embedding_dim=64)
    assert spec.to_json() == ('{"embedding_dim": 64, "n_tokens": 18, "token_dim": 16, "width": 64, '
                              '"window_size": 32}')
    assert spec.channels == 1 and _stacked_spec().channels == 3


def _stack_settings(**source):
    return {"name": "p", "raster": "/x.tif", "resolution": 7, "stack": [source]}


@pytest.mark.parametrize("source, problem", [
    ({"name": "dem", "raster": "/d.tif", "kind": "continuous", "legend": "nlcd"}, "a continuous source has no legend"),
    ({"name": "dem", "raster": "/d.tif", "kind": "height"}, "stack.0.kind"),
    ({"name": "Bad Name", "raster": "/d.tif", "kind": "continuous"}, "stack.0.name"),
    ({"name": "dem", "kind": "continuous"}, "stack.0.raster"),
])
def test_bad_stacked_sources_are_named(source, problem):
    with pytest.raises(ProductConfigError, match=problem):
        settings_from_mapping(_stack_settings(**source))


def test_stacked_source_names_are_distinct_and_give_statuses():
    source = {"name": "dem", "raster": "/d.tif", "kind": "continuous"}
    with pytest.raises(ProductConfigError, match="distinct"):
        settings_from_mapping({**_stack_settings(**source), "stack": [source, source]})
    settings = settings_from_mapping(_stack_settings(**source))
    assert settings.statuses[-1] == "missing_dem" and settings.statuses[:7] == cell_statuses()
    assert STATUS_CODE["unknown_class"] == 6 and settings.statuses.index("missing_dem") == 7


def test_stacked_paths_are_relative_to_the_product_file(tmp_path):
    from geoembed.landcover.settings import load_settings

    (tmp_path / "p.yaml").write_text("name: p\nraster: lc.tif\nresolution: 7\n"
                                     "stack:\n  - {name: dem, raster: data/dem.tif, kind: continuous}\n")
    settings = load_settings(tmp_path / "p.yaml")
    assert settings.stack[0].raster == str(tmp_path / "data" / "dem.tif")


def test_a_changed_stacked_source_refreshes_every_region(nlcd_zion, srtm_zion):
    """The stencil records each stacked source's content version; when one changes, every region is listed
    as changed (what the landing sensor refreshes), and the source's data version changes."""
    from dataclasses import replace
    from functools import partial

    from geoembed.landcover.stencil import update_stencil
    from geoembed_resources import RasterReader

    settings = settings_from_mapping({"name": "stacked", "raster": str(nlcd_zion), "legend": "nlcd", "resolution": 7,
                                      "region_resolution": 4, "stack": [
                                          {"name": "elevation", "raster": str(srtm_zion), "kind": "continuous"}]})
    reader = RasterReader()
    files, stacked = reader.source_files(settings), reader.stacked_files(settings)
    assert [f.name for f in stacked] == ["stack/elevation"]
    assert [f.name for f in reader.watched_files(settings)] == [nlcd_zion.name, "stack/elevation"]

    def scan(previous, stacked_files):
        return update_stencil(settings, files, previous, describe=partial(reader.describe, nodata_override=None),
                              open_source=reader.open, stacked_files=stacked_files)

    first = scan(None, stacked)
    assert first.state.stacked[0].kind == "continuous" and first.state.stacked[0].version == stacked[0].version
    assert scan(first.state, stacked).mosaic.changed_regions == []
    edited = [replace(stacked[0], version="0123456789abcdef")]
    again = scan(first.state, edited)
    assert again.mosaic.changed_regions == first.state.regions
    assert again.state.source_version != first.state.source_version


def test_an_unreadable_stacked_source_is_named(nlcd_zion, tmp_path):
    from geoembed.core.rasters import RasterInputError
    from geoembed_resources import RasterReader

    settings = settings_from_mapping({"name": "stacked", "raster": str(nlcd_zion), "legend": "nlcd", "resolution": 7,
                                      "stack": [{"name": "dem", "raster": str(tmp_path / "no.tif"),
                                                 "kind": "continuous"}]})
    with pytest.raises(RasterInputError, match="no.tif.*does not exist"):
        RasterReader().stacked_files(settings)
