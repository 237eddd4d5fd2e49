"""Landing locations: listing, cursor diffs, mosaic order and the merged stencil (no Dagster)."""

from __future__ import annotations

import os
import time

import h3.api.basic_int as h3i
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoembed.core import sources
from geoembed.core.grids.h3 import cell_centres
from geoembed.landcover.categorical import describe_raster
from geoembed.landcover.windows import Legend, RasterBlocks, sample_mosaic
from geoembed.landcover.stencil import FileStencil, StencilState, merge_stencils

from conftest import write_raster


def _touch(path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_listing_and_cursor_diff(tmp_path):
    for name in ("a.tif", "b.tif", ".c.tif.part", "notes.txt"):
        (tmp_path / name).write_bytes(name.encode())
    listing = sources.list_local(tmp_path, "*.tif")
    assert [f.name for f in listing] == ["a.tif", "b.tif"]  # dot files (partial copies) are ignored
    first = sources.diff_landing({}, listing)
    assert [f.name for f in first.added] == ["a.tif", "b.tif"] and first.any
    known = sources.advance_cursor({}, first)
    assert sources.decode_cursor(sources.encode_cursor(known, {"x": 1})) == (known, {"x": 1})

    unchanged = sources.diff_landing(known, sources.list_local(tmp_path, "*.tif"))
    assert not unchanged.any and unchanged.unchanged == 2

    _touch(tmp_path / "a.tif", 1_000)  # same bytes, new time: read once, no refresh
    (tmp_path / "b.tif").write_bytes(b"new content")
    (tmp_path / "d.tif").write_bytes(b"d")
    changes = sources.diff_landing(known, sources.list_local(tmp_path, "*.tif"))
    assert [f.name for f in changes.touched] == ["a.tif"]
    assert [f.name for f in changes.changed] == ["b.tif"] and [f.name for f in changes.added] == ["d.tif"]
    known = sources.advance_cursor(known, changes)
    (tmp_path / "d.tif").unlink()
    removed = sources.diff_landing(known, sources.list_local(tmp_path, "*.tif"))
    assert removed.removed == ["d.tif"] and removed.any
    assert "d.tif" not in sources.advance_cursor(known, removed)


def test_versioning_stops_at_the_deadline_and_resumes(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.tif").write_bytes(bytes([i]))
    listing = sources.list_local(tmp_path, "*.tif")
    late = sources.diff_landing({}, listing, deadline=time.monotonic() - 1)
    assert len(late.pending) == 5 and not late.any
    known = sources.advance_cursor({}, late)
    assert known == {}  # pending files are looked at again next time
    assert len(sources.diff_landing(known, listing).added) == 5


def test_missing_landing_location_is_named(tmp_path):
    with pytest.raises(sources.LandingLocationError, match="nowhere.*not a directory"):
        sources.list_local(tmp_path / "nowhere", "*.tif")
    with pytest.raises(sources.LandingLocationError, match="not an s3"):
        sources.split_s3_uri("s3:///prefix")
    assert sources.split_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")


def test_newest_first_and_versions():
    old = sources.SourceFile("z_2020.tif", "", 1, 100, version="a" * 16)
    new = sources.SourceFile("a_2021.tif", "", 1, 200, version="b" * 16)
    assert [f.name for f in sources.newest_first([old, new])] == ["a_2021.tif", "z_2020.tif"]
    assert sources.manifest_version([old]) == "a" * 16
    assert sources.manifest_version([old, new]) == sources.manifest_version([new, old]) != "a" * 16


def test_contiguous_batches():
    ordered = [str(i) for i in range(10)]
    assert sources.contiguous_batches(ordered, {"1", "2", "3", "5", "9"}, 2) == [["1", "2"], ["3"], ["5"], ["9"]]
    assert sources.contiguous_batches(ordered, set(), 4) == []


def test_mosaic_takes_each_cell_from_the_newest_file_holding_it(tmp_path):
    # Two rasters side by side overlapping in the middle; the newer one holds class 2.
    older = write_raster(tmp_path / "old.tif", np.full((100, 100), 1, np.uint8), from_origin(10.0, 1.0, 0.01, 0.01))
    newer = write_raster(tmp_path / "new.tif", np.full((100, 100), 2, np.uint8), from_origin(10.5, 1.0, 0.01, 0.01))
    legend = Legend.from_mapping({1: "one", 2: "two"})
    rasters = []
    for path in (newer, older):
        info = describe_raster(str(path))
        rasters.append((RasterBlocks(rasterio.open(path)), info))
    cells = np.array(sorted({h3i.latlng_to_cell(0.5, lon, 6) for lon in np.linspace(10.05, 11.45, 40)}), np.uint64)
    lat, lon = cell_centres(cells)
    samples, source = sample_mosaic(rasters, legend, cells, lat, lon, 4, 0.5, False)
    in_newer = lon >= 10.5
    assert (source[in_newer] == 0).all() and (source[~in_newer] == 1).all()
    dominant_value = legend.values[samples.dominant]
    assert (dominant_value[in_newer] == 2).all() and (dominant_value[~in_newer] == 1).all()


def _file(name, version, regions, covered=None, error=""):
    return FileStencil(name, f"/x/{name}", version, "f", 0, regions, covered if covered is not None else regions,
                       {k: 7 for k in regions}, {}, error)


def _state(merged):
    """The stencil state a merge leads to (as h3_regions writes it)."""
    return StencilState(settings={}, source_version="", legend={}, regions=merged.regions,
                        cells_per_region=merged.cells_per_region, region_sources=merged.region_sources,
                        sources={f.name: f for f in merged.files})


def test_merged_stencil_lists_the_regions_changed_files_cover():
    first = merge_stencils([_file("a", "1" * 16, ["r1", "r2"])], None)
    assert first.regions == ["r1", "r2"] and first.changed_regions == ["r1", "r2"]
    state = _state(first)
    # b lands over r2 and r3 (r3 is new); a is unchanged.
    second = merge_stencils([_file("b", "2" * 16, ["r2", "r3"]), _file("a", "1" * 16, ["r1", "r2"])], state)
    assert second.added == ["b"] and second.changed_regions == ["r2", "r3"]
    assert second.region_sources == {"r1": ["a"], "r2": ["b", "a"], "r3": ["b"]}
    # A file that covers a region with background only still provides its cells there.
    background = merge_stencils([_file("c", "3" * 16, [], covered=["r1"]), *first.files], state)
    assert background.region_sources["r1"] == ["c", "a"] and background.changed_regions == ["r1"]
    # a is removed: r1 has no source left and keeps its rows (orphaned), r2 falls back to b.
    state2 = _state(second)
    third = merge_stencils([_file("b", "2" * 16, ["r2", "r3"])], state2)
    assert third.removed == ["a"] and third.orphaned_regions == ["r1"]
    assert third.changed_regions == ["r2"] and third.region_sources["r1"] == []
    # A rejected (unreadable) file contributes nothing.
    rejected = merge_stencils([_file("bad", "4" * 16, ["r9"], error="cannot be read"), *first.files], state)
    assert "r9" not in rejected.regions


def test_files_keeping_different_sub_regions_of_a_region_keep_their_union():
    """A stencil finer than the regions: each file keeps the sub-regions where it has data; the region keeps
    all of them, and its cell count is theirs."""
    import h3

    region = h3.latlng_to_cell(0.3, 6.6, 3)
    subs = sorted(h3.cell_to_children(region, 4))
    a = _file("a", "1" * 16, [region])
    a.kept = {region: subs[:2]}
    b = _file("b", "2" * 16, [region])
    b.kept = {region: subs[1:3]}
    merged = merge_stencils([b, a], None, resolution=6)
    assert merged.region_kept == {region: subs[:3]}
    assert merged.cells_per_region[region] == 3 * 49
