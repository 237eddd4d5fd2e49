"""The embedding product store (an icechunk repository): xarray/xdggs read a snapshot of it, region
writes replace, concurrent writes of different regions (pentagons sharing chunks included) lose nothing,
layout changes keep data, and a plain Zarr store from before is converted with its rows."""

import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor

import h3.api.basic_int as h3i
import numpy as np
import pytest
import xarray as xr
import zarr
import icechunk
import xdggs  # noqa: F401  (registers the .dggs accessor)

from geoembed.core.grids.h3 import ProductLayout, cells_at
from geoembed.core.lineage import decode_version
from geoembed.landcover.stores import (
    NOT_COMPUTED, _encoding, StoreLayoutError, _template, ensure_product_store, open_product, write_product_region,
)

DIM = 4
V1 = "0000000000000001"  # the model version _write(salt=0) records
HEXAGONS = [h3i.latlng_to_cell(lat, lon, 1) for lat, lon in [(0, 10), (20, 10), (40, 10), (-30, 140)]]
PENTAGONS = [int(p) for p in cells_at(1) if h3i.is_pentagon(int(p))][:3]


def _layout(regions) -> ProductLayout:
    return ProductLayout.build(np.array(regions, dtype=np.uint64), 3, 1)


def _vectors(region: int, n: int, salt: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(region % 2**32)
    v = rng.normal(size=(n, DIM)).astype(np.float32) + salt
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write(args):
    path, regions, region, salt = args
    layout = _layout(regions)
    n = layout.rows_of(region).stop - layout.rows_of(region).start
    write_product_region(path, layout, region, embedding=_vectors(region, n, salt), status=np.zeros(n, np.uint8),
                         model_version=f"{int(salt) + 1:016x}", source_version="00000000000000aa")
    return region


def test_store_opens_in_one_call_and_decodes_with_xdggs(tmp_path):
    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS)
    ensure_product_store(path, layout, DIM, {"product": "t"})
    _write((path, HEXAGONS, HEXAGONS[0], 0.0))
    # What a user writes: icechunk's reader, then plain xarray, which warns of nothing (no consolidated
    # metadata to miss: a snapshot opens in one read).
    session = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path))).readonly_session("main")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(session.store)
    assert ds["cell_ids"].attrs == {"grid_name": "h3", "level": 3}
    assert ds.sizes["cells"] == layout.n_rows and ds["cell_ids"].dtype == np.uint64
    decoded = ds.dggs.decode()
    assert decoded.dggs.grid_info.level == 3
    rows = layout.rows_of(HEXAGONS[0])
    assert (ds["status"].values[rows] == 0).all()
    assert (ds["status"].values[rows.stop:] == NOT_COMPUTED).all()
    assert np.isnan(ds["embedding"].values[rows.stop:]).all()
    assert {decode_version(v) for v in ds["model_version"].values[rows]} == {V1}
    assert ds.attrs["model_versions"] == [V1] and ds.attrs["source_versions"] == ["00000000000000aa"]
    assert (ds["model_version"].values[rows.stop:] == 0).all()


def test_rewriting_a_region_replaces_its_rows_only(tmp_path):
    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS)
    ensure_product_store(path, layout, DIM, {})
    for region in HEXAGONS:
        _write((path, HEXAGONS, region, 0.0))
    before = open_product(path)["embedding"].values
    _write((path, HEXAGONS, HEXAGONS[1], 5.0))
    after = open_product(path)
    changed = np.zeros(layout.n_rows, bool)
    changed[layout.rows_of(HEXAGONS[1])] = True
    assert not np.allclose(after["embedding"].values[changed], before[changed])
    np.testing.assert_array_equal(after["embedding"].values[~changed], before[~changed])
    assert sorted(after.attrs["model_versions"]) == [V1, f"{6:016x}"]


def test_concurrent_writes_of_different_regions_lose_nothing(tmp_path):
    path = tmp_path / "e.zarr"
    regions = HEXAGONS + PENTAGONS
    layout = _layout(regions)
    ensure_product_store(path, layout, DIM, {})
    assert any(layout.shares_chunk(p) for p in PENTAGONS)  # writers of one chunk conflict at commit
    # Separate processes as Dagster's executors start them (spawned: a forked icechunk runtime would hang).
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_write, [(path, regions, r, 0.0) for r in regions]))
    ds = open_product(path)
    for region in regions:
        rows = layout.rows_of(region)
        np.testing.assert_allclose(ds["embedding"].values[rows], _vectors(region, rows.stop - rows.start))
    assert (ds["status"].values == 0).all()


def test_a_new_layout_carries_materialized_rows_over(tmp_path):
    path = tmp_path / "e.zarr"
    ensure_product_store(path, _layout(HEXAGONS[:2]), DIM, {})
    _write((path, HEXAGONS[:2], HEXAGONS[1], 0.0))
    assert not ensure_product_store(path, _layout(HEXAGONS[:2]), DIM, {})  # unchanged: left alone
    bigger = _layout(HEXAGONS)
    assert ensure_product_store(path, bigger, DIM, {})
    ds = open_product(path)
    rows = bigger.rows_of(HEXAGONS[1])
    np.testing.assert_allclose(ds["embedding"].values[rows], _vectors(HEXAGONS[1], rows.stop - rows.start))
    assert ds.attrs["model_versions"] == [V1]
    assert (ds["status"].values[bigger.rows_of(HEXAGONS[2])] == NOT_COMPUTED).all()


def test_versions_must_be_content_hashes(tmp_path):
    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS[:1])
    ensure_product_store(path, layout, DIM, {})
    n = layout.n_rows
    with pytest.raises(ValueError, match="not a 16-hex-digit"):
        write_product_region(path, layout, HEXAGONS[0], embedding=_vectors(HEXAGONS[0], n),
                             status=np.zeros(n, np.uint8), model_version="latest", source_version="00000000000000aa")


def test_each_region_write_is_one_snapshot_and_old_snapshots_stay_readable(tmp_path):
    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS)
    ensure_product_store(path, layout, DIM, {"product": "t"})
    first = _write_snapshot(path, HEXAGONS[0], 0.0)
    second = _write_snapshot(path, HEXAGONS[1], 1.0)
    assert first != second and open_product(path).attrs["snapshot"] == second
    pinned = open_product(path, snapshot=first)
    assert pinned.attrs["snapshot"] == first and pinned.attrs["model_versions"] == [V1]
    assert (pinned["status"].values[layout.rows_of(HEXAGONS[1])] == NOT_COMPUTED).all()
    assert open_product(path).attrs["model_versions"] == [V1, "0000000000000002"]


def _write_snapshot(path, region, salt) -> str:
    layout = _layout(HEXAGONS)
    n = layout.rows_of(region).stop - layout.rows_of(region).start
    return write_product_region(path, layout, region, embedding=_vectors(region, n, salt),
                                status=np.zeros(n, np.uint8), model_version=f"{int(salt) + 1:016x}",
                                source_version="00000000000000aa")


def test_a_writer_with_a_stale_layout_is_refused(tmp_path):
    path = tmp_path / "e.zarr"
    ensure_product_store(path, _layout(HEXAGONS), DIM, {})
    stale = _layout(HEXAGONS[:2])
    n = stale.rows_of(HEXAGONS[0]).stop - stale.rows_of(HEXAGONS[0]).start
    with pytest.raises(StoreLayoutError, match="laid out for other regions"):
        write_product_region(path, stale, HEXAGONS[0], embedding=_vectors(HEXAGONS[0], n),
                             status=np.zeros(n, np.uint8), model_version=V1, source_version="00000000000000aa")


def test_a_plain_zarr_store_from_before_is_converted_with_its_rows(tmp_path):
    """Stores written before transactions (plain Zarr v3) keep every row when their layout is next ensured."""
    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS)
    template = _template(layout, DIM, {"product": "t"})
    template.to_zarr(path, compute=False, mode="w", zarr_format=3, consolidated=False, encoding=_encoding(template))
    zarr.open_group(path, mode="r+").attrs["model_versions"] = [V1]
    rows = layout.rows_of(HEXAGONS[2])
    vectors = _vectors(HEXAGONS[2], rows.stop - rows.start)
    xr.Dataset({"embedding": (("cells", "embedding_dim"), vectors),
                "status": (("cells",), np.zeros(len(vectors), np.uint8))}).to_zarr(
        path, region={"cells": rows}, zarr_format=3, consolidated=False)
    assert not open_product(path).attrs.get("snapshot")  # still readable as it is
    with pytest.raises(StoreLayoutError, match="plain Zarr store"):
        _write((path, HEXAGONS, HEXAGONS[0], 0.0))
    assert ensure_product_store(path, layout, DIM, {"product": "t"})
    ds = open_product(path)
    assert ds.attrs["snapshot"] and ds.attrs["model_versions"] == [V1]
    np.testing.assert_allclose(ds["embedding"].values[rows], vectors)
    _write((path, HEXAGONS, HEXAGONS[0], 0.0))
    assert not list(tmp_path.glob(".e.zarr.*"))  # nothing left beside it


@pytest.mark.parametrize("storage", ["int8", "float32+int8"])
def test_an_int8_store_holds_codes_and_scales_that_readers_dequantise(tmp_path, storage):
    from geoembed.core.quantise import dequantise
    from geoembed.landcover.stores import embedding_array

    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS)
    ensure_product_store(path, layout, DIM, {"product": "t", "embedding_storage": storage})
    _write((path, HEXAGONS, HEXAGONS[0], 0.0))
    ds = open_product(path)
    rows = layout.rows_of(HEXAGONS[0])
    n = rows.stop - rows.start
    assert ds["embedding_int8"].dtype == np.int8 and ds["embedding_scale"].dtype == np.float32
    assert ("embedding" in ds) == (storage == "float32+int8")
    assert "embedding_scale" in ds["embedding_int8"].attrs["dequantisation"]
    assert ds.attrs["embedding_storage"] == storage and "int8" in ds.attrs["embedding"]
    original = _vectors(HEXAGONS[0], n)
    # The documented dequantisation, by hand, and our reader agree, within int8's step.
    by_hand = ds["embedding_int8"].values[rows].astype(np.float32) * ds["embedding_scale"].values[rows][:, None]
    np.testing.assert_allclose(by_hand, original, atol=1 / 127)
    # Readers take the float32 vectors where the store keeps them, else dequantise.
    expected = original if storage == "float32+int8" else dequantise(ds["embedding_int8"].values[rows],
                                                                     ds["embedding_scale"].values[rows])
    np.testing.assert_allclose(embedding_array(ds).values[rows], expected, atol=1e-6)
    assert (np.abs(np.asarray(embedding_array(ds).values[rows]) - original) < 0.01).all()
    # Rows never written: no vector (NaN scale), whichever way they are read.
    assert np.isnan(ds["embedding_scale"].values[rows.stop:]).all()
    assert np.isnan(embedding_array(ds).values[rows.stop:]).all()
    # A lazy (dask) read dequantises the same way.
    lazy = embedding_array(open_product(path, chunks={}))
    np.testing.assert_allclose(lazy.data[rows].compute(), embedding_array(ds).values[rows])


def test_changing_the_vector_storage_rewrites_the_store(tmp_path):
    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS)
    ensure_product_store(path, layout, DIM, {})
    _write((path, HEXAGONS, HEXAGONS[0], 0.0))
    assert not ensure_product_store(path, layout, DIM, {"embedding_storage": "float32"})
    assert ensure_product_store(path, layout, DIM, {"embedding_storage": "int8"})
    ds = open_product(path)
    assert "embedding" not in ds and (ds["status"].values == NOT_COMPUTED).all()  # re-embedded, never mixed


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_several_regions_in_one_commit_equal_region_by_region_writes(tmp_path, storage):
    from geoembed.core.sinks.repository import open_repository
    from geoembed.landcover.stores import RegionWrite, embedding_array, write_product_regions

    layout = _layout(HEXAGONS)
    regions = sorted(HEXAGONS, key=lambda r: layout.rows_of(r).start)
    writes = []
    for i, region in enumerate(regions[:3] + regions[-1:]):  # three adjacent regions and a distant one
        rows = layout.rows_of(region)
        n = rows.stop - rows.start
        writes.append(RegionWrite(region, _vectors(region, n), np.full(n, i % 2, np.uint8), V1,
                                  np.full(n, 0xAB, np.uint64)))
    one, each = tmp_path / "one.zarr", tmp_path / "each.zarr"
    for path in (one, each):
        ensure_product_store(path, layout, DIM, {"product": "t", "embedding_storage": storage})
    write_product_regions(one, layout, writes)
    for w in writes:
        write_product_region(each, layout, w.region, embedding=w.embedding, status=w.status, model_version=V1,
                             source_version=w.source_version)
    a, b = open_product(one), open_product(each)
    for name in ("status", "model_version", "source_version"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    np.testing.assert_allclose(embedding_array(a).values, embedding_array(b).values, atol=0, equal_nan=True)
    snapshots = list(open_repository(one).ancestry(branch="main"))
    assert len(snapshots) == 3  # the repository's root, the template, and one commit for the four regions
    assert a.attrs["model_versions"] == [V1]


def test_rows_of_a_run_read_in_spans_equal_region_by_region_reads(tmp_path):
    from geoembed.landcover.regions import region_rows, regions_rows

    path = tmp_path / "e.zarr"
    layout = _layout(HEXAGONS + PENTAGONS)
    ensure_product_store(path, layout, DIM, {"product": "t"})
    for region in (HEXAGONS + PENTAGONS)[:-1]:  # every region but the last (never read here)
        _write((path, HEXAGONS + PENTAGONS, region, 0.0))
    ds = open_product(path)
    keys = [f"{r:x}" for r in HEXAGONS + PENTAGONS[:-1]]
    for max_rows in (10**6, 50):  # one span, and spans of a few regions
        batched = list(regions_rows(ds, layout, keys, 1, max_rows=max_rows))
        assert [k for k, _ in batched] == keys
        for key, rows in batched:
            one = region_rows(ds, layout, key, 1)
            np.testing.assert_array_equal(rows.cells, one.cells)
            np.testing.assert_array_equal(rows.embedding, one.embedding)
            assert list(rows.source_version) == list(one.source_version) and rows.model_version == one.model_version


def _samples(region_seed: int, n: int = 7):
    from geoembed.landcover.stores import samples_dataset
    from geoembed.landcover.windows import Legend, WindowSamples

    rng = np.random.default_rng(region_seed)
    legend = Legend.from_mapping({0: "water", 1: "forest", 2: "crop"})
    cells = np.sort(rng.integers(0, 2**40, n).astype(np.uint64)) + np.uint64(region_seed) * np.uint64(2**41)
    samples = WindowSamples(cells=cells, windows=rng.integers(0, 3, (n, 4, 4), dtype=np.uint8),
                            fractions=rng.random((n, 3), dtype=np.float32),
                            valid_fraction=rng.random(n, dtype=np.float32), status=np.zeros(n, np.uint8),
                            unknown_values=np.zeros(0, np.int64))
    return samples_dataset(samples, legend, 5, {"source_version": f"{region_seed:016x}", "region": region_seed})


def test_a_runs_samples_go_in_one_store_and_each_region_reads_back_its_own(tmp_path, monkeypatch):
    from geoembed.landcover import stores

    folder = tmp_path / "samples"
    first = {f"r{i}": _samples(i) for i in range(4)}
    store = stores.write_samples_batch(folder, first)
    assert [p.name for p in (folder / "batches").iterdir()] == [store.name]
    for key, ds in first.items():
        back = stores.open_region_samples(folder, key)
        assert back.attrs == ds.attrs and stores.has_region_samples(folder, key)
        for name in ("windows", "fractions", "status", "source_version", "cell_ids"):
            np.testing.assert_array_equal(back[name].values, ds[name].values)
            assert back[name].attrs == ds[name].attrs  # e.g. the cell ids' grid (what xdggs reads)
    assert not stores.has_region_samples(folder, "r9")
    # Re-running two regions: they point at the new store; the first store still holds r2 and r3.
    monkeypatch.setattr(stores, "UNREFERENCED_SAMPLES_GRACE_SECONDS", 0)
    second = stores.write_samples_batch(folder, {"r0": _samples(10), "r1": _samples(11)})
    assert sorted(p.name for p in (folder / "batches").iterdir()) == sorted([store.name, second.name])
    np.testing.assert_array_equal(stores.open_region_samples(folder, "r0")["windows"].values, _samples(10)["windows"].values)
    np.testing.assert_array_equal(stores.open_region_samples(folder, "r3")["windows"].values, first["r3"]["windows"].values)
    # Once no region points at the first store any more, it is removed.
    stores.write_samples_batch(folder, {"r2": _samples(12), "r3": _samples(13)})
    assert store.name not in [p.name for p in (folder / "batches").iterdir()]


def test_samples_written_with_pointer_files_by_an_older_version_are_read_then_replaced(tmp_path, monkeypatch):
    """Before manifests, each region had a pointer file naming its store and rows: still read, and once its
    regions are written again the pointers go and (after the grace period) the old store with them."""
    import json

    from geoembed.core.sinks.zarr import write_dataset
    from geoembed.landcover import stores

    folder = tmp_path / "samples"
    old = {"r0": _samples(0), "r1": _samples(1)}
    merged = stores.concat_cells(list(old.values()))
    merged.attrs = {"regions": json.dumps(list(old))}
    legacy = folder / "batches" / "legacy.zarr"
    write_dataset(legacy, merged)
    (folder / "regions").mkdir(parents=True)
    for i, (key, ds) in enumerate(old.items()):
        (folder / "regions" / f"{key}.json").write_text(json.dumps(
            {"store": legacy.name, "start": 7 * i, "stop": 7 * (i + 1), "attrs": ds.attrs}))
    for key, ds in old.items():
        assert stores.has_region_samples(folder, key)
        np.testing.assert_array_equal(stores.open_region_samples(folder, key)["windows"].values, ds["windows"].values)
    monkeypatch.setattr(stores, "UNREFERENCED_SAMPLES_GRACE_SECONDS", 0)
    stores.write_samples_batch(folder, {"r0": _samples(10)})  # r1 still points at the old store: it stays
    assert legacy.exists() and not (folder / "regions" / "r0.json").exists()
    np.testing.assert_array_equal(stores.open_region_samples(folder, "r0")["windows"].values, _samples(10)["windows"].values)
    np.testing.assert_array_equal(stores.open_region_samples(folder, "r1")["windows"].values, old["r1"]["windows"].values)
    stores.write_samples_batch(folder, {"r1": _samples(11)})
    assert not legacy.exists() and not list((folder / "regions").iterdir())
    # One manifest per store, and only for the stores still named.
    manifests = sorted(p.name.split("-", 1)[1] for p in (folder / "manifests").iterdir())
    assert manifests == sorted(f"{p.stem}.json" for p in (folder / "batches").iterdir())


def test_a_failed_samples_write_keeps_every_regions_previous_samples(tmp_path, monkeypatch):
    from geoembed.landcover import stores

    folder = tmp_path / "samples"
    stores.write_samples_batch(folder, {"r0": _samples(0), "r1": _samples(1)})

    def broken(path, ds, encoding=None):
        raise OSError("disk full")

    monkeypatch.setattr(stores, "write_dataset", broken)
    with pytest.raises(OSError):
        stores.write_samples_batch(folder, {"r0": _samples(5), "r1": _samples(6)})
    np.testing.assert_array_equal(stores.open_region_samples(folder, "r1")["windows"].values, _samples(1)["windows"].values)


def test_a_region_stored_alone_by_an_older_version_is_still_read(tmp_path):
    from geoembed.landcover import stores

    folder = tmp_path / "samples"
    stores.write_samples(folder / "r7.zarr", _samples(7))
    assert stores.has_region_samples(folder, "r7")
    np.testing.assert_array_equal(stores.open_region_samples(folder, "r7")["windows"].values, _samples(7)["windows"].values)


def test_a_finer_stencil_lays_out_only_the_kept_sub_regions_and_carries_only_unchanged_regions(tmp_path):
    """Regions of a stencil finer than the regions hold only their kept sub-regions' cells; a region whose
    kept sub-regions change gets other rows and is embedded again, the others keep theirs."""
    subs = {r: sorted(h3i.cell_to_children(r, 2)) for r in HEXAGONS[:2]}
    kept = {HEXAGONS[0]: subs[HEXAGONS[0]][:3], HEXAGONS[1]: subs[HEXAGONS[1]][:2]}
    layout = ProductLayout.build(np.array(HEXAGONS[:2], dtype=np.uint64), 3, 1, kept)
    assert sorted(layout.counts.tolist()) == [2 * 7, 3 * 7] and layout.n_rows == 35
    for region in HEXAGONS[:2]:
        cells = layout.all_cells()[layout.rows_of(region)]
        assert {h3i.cell_to_parent(int(c), 2) for c in cells} == set(kept[region])
    path = tmp_path / "e.zarr"
    ensure_product_store(path, layout, DIM, {})
    for region in HEXAGONS[:2]:
        n = layout.rows_of(region).stop - layout.rows_of(region).start
        write_product_region(path, layout, region, embedding=_vectors(region, n), status=np.zeros(n, np.uint8),
                             model_version=V1, source_version="00000000000000aa")
    assert not ensure_product_store(path, ProductLayout.build(np.array(HEXAGONS[:2], dtype=np.uint64), 3, 1, kept),
                                    DIM, {})
    changed = ProductLayout.build(np.array(HEXAGONS[:2], dtype=np.uint64), 3, 1,
                                  {**kept, HEXAGONS[1]: subs[HEXAGONS[1]][:4]})
    assert ensure_product_store(path, changed, DIM, {})
    ds = open_product(path)
    assert ds.sizes["cells"] == 49
    rows = changed.rows_of(HEXAGONS[0])
    np.testing.assert_allclose(ds["embedding"].values[rows], _vectors(HEXAGONS[0], 21))
    assert (ds["status"].values[changed.rows_of(HEXAGONS[1])] == NOT_COMPUTED).all()


def test_with_kept_sub_regions_a_chunk_is_a_sub_region_and_hexagon_regions_stay_chunk_aligned():
    subs = {r: sorted(h3i.cell_to_children(r, 2)) for r in HEXAGONS}
    layout = ProductLayout.build(np.array(HEXAGONS, dtype=np.uint64), 3, 1,
                                 {r: subs[r][: i + 1] for i, r in enumerate(HEXAGONS)})
    assert layout.slot == 7
    assert all(start % layout.slot == 0 for start in layout.offsets) and layout.n_rows == 7 * (1 + 2 + 3 + 4)
