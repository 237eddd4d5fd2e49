"""MGRS tile footprints against the published Sentinel-2 grid, tile ids, chip keys, areas of interest."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import shapely
from pyproj import Transformer

from geoembed.core.geometry import GeometryInputError, area_of_interest, bbox_area, box_lonlat
from geoembed.core.grids.mgrs import (
    LATITUDE_BANDS, ChipRef, TileIdError, canonical_tile_id, chip_key, place_key, published_grid, published_tile,
    tile_footprint, tile_from_index, tile_index,
)
from geoembed.imagery.aoi import tiles_for_area, tiles_for_geojson


@pytest.fixture(scope="module")
def grid():
    try:
        return published_grid()
    except TileIdError as exc:
        pytest.skip(str(exc))


def _published_corners(grid, tile_id: str) -> np.ndarray:
    return np.vstack([np.array(p.exterior.coords)[:-1] for n, p in zip(grid.names, grid.polygons) if n == tile_id])


def test_footprint_of_33uuu_from_its_id():
    tile = tile_footprint("33UUU")
    assert tile.epsg == 32633 and tile.bounds == (300000.0, 5790240.0, 409800.0, 5900040.0)
    assert tile_footprint("T33UUU") == tile and canonical_tile_id("t33uuu") == "33UUU"


def test_footprints_match_the_published_grid_in_every_latitude_band_and_hemisphere(grid):
    """A sample of tiles from every latitude band (C to X, both hemispheres; zones near the antimeridian
    and the Norway/Svalbard exceptions included): every published vertex within 1 m of a footprint corner."""
    by_band = collections.defaultdict(list)
    for name in sorted(grid.land):
        by_band[name[2]].append(name)
    rng = np.random.default_rng(0)
    sample = {"01CCV", "60XWA", "31VEG", "32VNM", "33XVJ", "18SVG", "56HLH", "19CEV"}
    for band in LATITUDE_BANDS:
        names = by_band[band]
        sample.update(rng.choice(names, size=min(12, len(names)), replace=False).tolist())
    assert {t[2] for t in sample} == set(LATITUDE_BANDS)
    worst = 0.0
    for name in sorted(sample & set(grid.land)):
        tile = tile_footprint(name)
        lonlat = _published_corners(grid, name)
        x, y = Transformer.from_crs("EPSG:4326", tile.crs, always_xy=True).transform(lonlat[:, 0], lonlat[:, 1])
        xmin, ymin, xmax, ymax = tile.bounds
        corners = np.array([[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax]])
        # every footprint corner is a published vertex (tiles split at the antimeridian have more vertices)
        distance = np.linalg.norm(corners[:, None] - np.column_stack([x, y])[None], axis=2).min(axis=1).max()
        worst = max(worst, float(distance))
        assert distance < 1.0, (name, distance)
    assert worst < 1.0


@pytest.mark.parametrize("bad", ["33UU", "33IUU", "61UUU", "00UUU", "33UAU", "X3UUU", ""])
def test_invalid_tile_ids_are_named(bad):
    with pytest.raises(TileIdError, match="tile id"):
        tile_footprint(bad)


def test_a_square_esa_does_not_publish_is_refused(grid):
    assert "32XMH" not in grid  # no 32X: ESA drops the squares Svalbard's zones replace
    tile_footprint("32XMH")  # a valid MGRS id ...
    with pytest.raises(TileIdError, match="not a Sentinel-2 tile"):
        published_tile("32XMH")  # ... but no Sentinel-2 tile


def test_chip_keys_round_trip_and_fit_a_bigint():
    assert tile_from_index(tile_index("01CCV")) == "01CCV" and tile_from_index(tile_index("60XWA")) == "60XWA"
    key = chip_key("60XWA", "2194-01-01", 4095, 4095)
    assert 0 < key < 2 ** 63
    assert ChipRef.from_key(chip_key("33UUU", "2017-02-16", 31, 12)) == ChipRef("33UUU", "2017-02-16", 31, 12)
    assert ChipRef.parse("33UUU_20170216_31_12") == ChipRef.parse("33uuu/2017-02-16/31_12")
    assert ChipRef.parse("33UUU/31_12").date is None and ChipRef.parse("33UUU/31_12").place == place_key("33UUU", 31, 12)
    with pytest.raises(TileIdError, match="is not"):
        ChipRef.parse("33UUU/yesterday/1_2")


def test_area_of_interest_across_the_antimeridian_touches_tiles_on_both_sides(grid):
    """A polygon drawn from 179.5 E to 179.5 W (longitudes jumping by 359 degrees): split at the
    antimeridian, it touches zone 60 and zone 1 tiles, and nothing near 0 degrees."""
    crossing = {"type": "Polygon", "coordinates": [[[179.5, -17], [-179.5, -17], [-179.5, -16.5], [179.5, -16.5],
                                                     [179.5, -17]]]}
    tiles = tiles_for_geojson(crossing)
    assert {t[:2] for t in tiles} == {"01", "60"}
    assert tiles == tiles_for_area(bbox_area(179.5, -17, -179.5, -16.5))


def test_area_of_interest_over_several_utm_zones(grid):
    tiles = tiles_for_geojson({"type": "Polygon", "coordinates": [[[11.5, 52.4], [12.2, 52.4], [12.2, 52.6],
                                                                   [11.5, 52.6], [11.5, 52.4]]]})
    assert {t[:2] for t in tiles} == {"32", "33"} and "33UUU" in tiles


@pytest.mark.parametrize("bad, problem", [
    ('{"type": "Point", "coordinates": [1, 2]}', "not an area"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}', "Self-intersection"),
    ("{not json", "not valid JSON"),
    ("/no/such/aoi.geojson", "neither a JSON object nor an existing file"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [200, 1], [0, 0]]]}', "lon in"),
    ('{"type": "FeatureCollection", "features": []}', "no Polygon"),
])
def test_bad_areas_of_interest_are_named(bad, problem):
    with pytest.raises(GeometryInputError, match=problem):
        area_of_interest(bad)


def test_projected_boxes_become_lonlat_polygons_that_round_trip():
    tile = tile_footprint("33UUU")
    footprint = box_lonlat(tile.bounds, tile.crs)
    back = Transformer.from_crs("EPSG:4326", tile.crs, always_xy=True)
    x, y = back.transform(*np.array(footprint.exterior.coords).T)
    assert abs(min(x) - tile.bounds[0]) < 0.01 and abs(max(y) - tile.bounds[3]) < 0.01
    near_antimeridian = tile_footprint("01KAB")
    split = box_lonlat(near_antimeridian.bounds, near_antimeridian.crs)
    assert isinstance(split, (shapely.Polygon, shapely.MultiPolygon))
