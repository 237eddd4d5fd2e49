import h3
import h3.api.basic_int as h3i
import numpy as np
import pytest

from geoembed.core.grids.h3 import (
    PartitionKeyError,
    ProductLayout,
    cells_at,
    parse_region_key,
    region_cells,
    region_key,
    regions_touching,
)


def test_parse_region_key_accepts_cells_of_the_region_resolution():
    key = h3.latlng_to_cell(0.3, 6.6, 5)
    assert parse_region_key(key, 5) == h3.str_to_int(key)
    assert region_key(parse_region_key(key, 5)) == key


@pytest.mark.parametrize("key", ["nonsense", "", "85754e67fffffff0", "123"])
def test_parse_region_key_rejects_non_cells(key):
    with pytest.raises(PartitionKeyError, match="not an H3 cell"):
        parse_region_key(key, 5)


def test_parse_region_key_rejects_other_resolutions():
    with pytest.raises(PartitionKeyError, match="resolution 6.*resolution 5"):
        parse_region_key(h3.latlng_to_cell(0.3, 6.6, 6), 5)


def test_region_cells_are_sorted_children():
    region = h3i.latlng_to_cell(10, 10, 1)
    cells = region_cells(region, 4)
    assert cells.dtype == np.uint64 and len(cells) == 343
    assert np.all(np.diff(cells.astype(np.int64)) > 0)
    assert {h3i.cell_to_parent(int(c), 1) for c in cells} == {region}


def test_every_region_at_res1_and_pentagons():
    regions = cells_at(1)
    assert len(regions) == 842
    pentagon = next(int(r) for r in regions if h3i.is_pentagon(int(r)))
    assert len(region_cells(pentagon, 4)) == 286


def test_regions_touching_crosses_the_antimeridian():
    regions = regions_touching((179.0, -17.5, -179.0, -16.5), 3)  # Fiji
    lons = [h3i.cell_to_latlng(int(r))[1] for r in regions]
    assert min(lons) < -178 and max(lons) > 178
    assert h3i.latlng_to_cell(-17.0, 179.9, 3) in set(regions.tolist())
    assert h3i.latlng_to_cell(-17.0, -179.9, 3) in set(regions.tolist())


def test_regions_touching_reaches_the_poles():
    regions = set(regions_touching((-180, 80, 180, 90), 2).tolist())
    assert h3i.latlng_to_cell(89.99, 0.0, 2) in regions
    assert h3i.latlng_to_cell(89.99, 179.0, 2) in regions


def test_layout_gives_each_hexagon_region_its_own_chunk_and_pentagons_last():
    hexagons = [h3i.latlng_to_cell(lat, 10, 1) for lat in (0, 20, 40)]
    pentagons = [int(p) for p in cells_at(1) if h3i.is_pentagon(int(p))][:2]
    layout = ProductLayout.build(np.array(pentagons + hexagons, dtype=np.uint64), 4, 1)
    assert layout.slot == 343
    assert [int(r) for r in layout.regions[-2:]] == sorted(pentagons)
    for region in hexagons:
        rows = layout.rows_of(region)
        assert rows.start % 343 == 0 and rows.stop - rows.start == 343
        assert not layout.shares_chunk(region)
    assert layout.shares_chunk(pentagons[1]) or layout.shares_chunk(pentagons[0])
    cells = layout.all_cells()
    assert len(cells) == layout.n_rows == 3 * 343 + 2 * 286
    assert len(np.unique(cells)) == len(cells)
    for region in hexagons + pentagons:
        assert {h3i.cell_to_parent(int(c), 1) for c in cells[layout.rows_of(region)]} == {region}
