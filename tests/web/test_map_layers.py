"""The map's colour layer: H3 parents by integer arithmetic, the Dagster map's colours from distinct
vectors, and views that never send more cells than their budget."""

from __future__ import annotations

import h3.api.basic_int as h3i
import numpy as np
import pytest

from geoembed.core.errors import InputError
from geoembed.core.evaluation import principal_rgb
from geoembed.core.grids.h3 import parent_cells, region_cells
from geoembed.core.sinks.pgvector import TableEmbeddings
from geoembed.web.api import parse_view_bbox
from geoembed.web.layers import WORLD, Bbox, ColourLayer

RES = 4


def _cells(*points: tuple[float, float], region_res: int = 1) -> np.ndarray:
    return np.concatenate([region_cells(h3i.latlng_to_cell(lat, lon, region_res), RES) for lon, lat in points])


def test_parent_cells_equal_h3s_cell_to_parent():
    cells = _cells((10, 10), (-179, -16), (170, 80))
    for res in range(RES + 1):
        expected = np.array([h3i.cell_to_parent(int(c), res) for c in cells], dtype=np.uint64)
        np.testing.assert_array_equal(parent_cells(cells, res), expected)


def test_colours_of_distinct_vectors_equal_the_expanded_rows():
    rng = np.random.default_rng(1)
    distinct = rng.normal(size=(300, 8)) * np.linspace(4, 0.2, 8)
    counts = rng.integers(1, 9, size=300)
    expanded = np.repeat(distinct, counts, axis=0)
    np.testing.assert_allclose(np.repeat(principal_rgb(distinct, counts), counts, axis=0), principal_rgb(expanded),
                               atol=1e-9)


def test_layer_colours_are_the_dagster_maps_and_parents_carry_their_childrens_mean():
    cells = _cells((10, 10), (20, 12))
    rng = np.random.default_rng(2)
    distinct = rng.normal(size=(50, 6)).astype(np.float32)
    index = rng.integers(0, 50, size=len(cells))
    layer = ColourLayer.from_embeddings(TableEmbeddings(cells.astype(np.int64), index, distinct), RES)
    expected = np.round(principal_rgb(distinct[index]) * 255)  # what the Dagster map draws for these rows
    assert np.abs(layer.colours(cells).astype(int) - expected).max() <= 1
    coarse = layer.levels[2]
    parent = coarse.cells[0]
    children = cells[parent_cells(cells, 2) == parent]
    mean = layer.colours(children).astype(float).mean(axis=0)
    assert np.abs(coarse.rgb[0].astype(float) - mean).max() <= 1.0
    assert [level.resolution for level in layer.levels] == list(range(RES + 1))


def test_a_view_takes_the_finest_resolution_that_fits_its_budget():
    cells = _cells((10, 10), (20, 12), (-100, 40))
    layer = ColourLayer(cells, np.zeros((len(cells), 3)), RES)
    whole = layer.view(WORLD, max_cells=len(cells))
    assert whole.resolution == RES and len(whole.cells) == len(cells) == whole.cells_in_product
    coarse = layer.view(WORLD, max_cells=len(cells) - 1)
    assert coarse.resolution < RES and len(coarse.cells) <= len(cells) - 1
    near = layer.view(Bbox(5, 5, 15, 15), max_cells=400)
    assert near.resolution == RES and 0 < len(near.cells) < len(cells)
    assert set(near.cells.tolist()) <= set(cells.tolist())
    lat = np.array([h3i.cell_to_latlng(int(c))[0] for c in near.cells])
    assert (lat > 0).all()  # nothing from the American region


def test_views_across_the_antimeridian_and_wrapped_longitudes():
    cells = _cells((179.5, -16), (-100, 40))
    layer = ColourLayer(cells, np.zeros((len(cells), 3)), RES)
    fiji = set(_cells((179.5, -16)).tolist())
    for bbox in (Bbox(170, -30, -170, 0), Bbox(170, -30, 190, 0), Bbox(-190, -30, -170, 0)):
        assert set(layer.view(bbox).cells.tolist()) == fiji, bbox


@pytest.mark.parametrize(("text", "says"), [
    ("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ("10,0,5,5", "west<east"),
    ("0,50,10,40", "south<north"), ("0,-95,10,0", "south<north"), ("-600,0,10,5", "540"),
])
def test_bad_view_bbox_names_the_problem(text, says):
    with pytest.raises(InputError, match=says):
        parse_view_bbox(text)
    assert parse_view_bbox("170,-30,190,0") == Bbox(170, -30, 190, 0)
