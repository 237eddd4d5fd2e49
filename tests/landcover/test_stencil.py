"""The stencil at a resolution finer than the partition regions: larger partitions, the same cells."""

import re
from functools import partial

import numpy as np
import pytest

from geoembed.landcover.settings import settings_from_mapping
from geoembed.landcover.stencil import update_stencil
from geoembed_resources import RasterReader


def _stencil(settings):
    reader = RasterReader()
    return update_stencil(settings, reader.source_files(settings), None,
                          describe=partial(reader.describe, nodata_override=None), open_source=reader.open).state


def test_a_finer_stencil_keeps_the_same_cells_in_fewer_partitions(worldcover_2020):
    """São Tomé's coast at res 7: regions at res 3 with the stencil at res 4 hold exactly the cells of
    regions at res 4 (a res-3 region keeps only its res-4 sub-regions with land), in fewer partitions."""
    base = {"name": "wc", "raster": str(worldcover_2020), "legend": "tag:legend", "background_classes": [80],
            "resolution": 7, "window_size": 8, "bbox": [6.4, 0.0, 6.8, 0.45]}
    fine_settings = settings_from_mapping({**base, "region_resolution": 4})
    coarse_settings = settings_from_mapping({**base, "region_resolution": 3, "stencil_resolution": 4})
    fine, coarse = _stencil(fine_settings), _stencil(coarse_settings)

    assert len(coarse.regions) < len(fine.regions)
    assert sorted(sub for subs in coarse.region_kept.values() for sub in subs) == fine.regions
    fine_cells = fine.layout(fine_settings).all_cells()
    layout = coarse.layout(coarse_settings)
    np.testing.assert_array_equal(np.sort(layout.all_cells()), np.sort(fine_cells))
    assert sum(coarse.cells_per_region.values()) == layout.n_rows == len(fine_cells)
    for key in coarse.regions:  # what region_samples reads is the region's rows of the product
        np.testing.assert_array_equal(coarse.region_cells(key, coarse_settings),
                                      layout.all_cells()[layout.rows_of(int(key, 16))])
    assert coarse.sources[worldcover_2020.name].status_counts == fine.sources[worldcover_2020.name].status_counts


@pytest.mark.parametrize("stencil, problem", [(2, "between region_resolution (3)"), (7, "and resolution (7)")])
def test_a_stencil_resolution_outside_the_regions_and_cells_is_refused(stencil, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        settings_from_mapping({"name": "p", "raster": "x.tif", "resolution": 7, "region_resolution": 3,
                               "stencil_resolution": stencil})
