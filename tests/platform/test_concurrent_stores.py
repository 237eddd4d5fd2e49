"""The product store on S3 (the S3-compatible server on loopback) under several writers at once, in
separate processes as pods would be, and with writers killed at any moment of a write or a commit:
nothing committed is lost, and readers always see each region whole (one write's rows, lineage
recorded)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h3.api.basic_int as h3i
import icechunk
import numpy as np
import pytest
import xarray as xr

from conftest import BUCKET
from geoembed.core.grids.h3 import ProductLayout, cells_at
from geoembed.core.lineage import decode_version
from geoembed.core.sinks.repository import open_repository
from geoembed.core.sinks.zarr import open_store, staged_store, write_dataset
from geoembed.landcover.stores import ensure_product_store, open_product, write_product_region

pytestmark = pytest.mark.integration

DIM = 8
HEXAGONS = [h3i.latlng_to_cell(lat, lon, 1) for lat, lon in [(0, 10), (20, 10), (40, 10), (-30, 140), (60, -100),
                                                             (-10, -60), (35, 135), (50, 20)]]
PENTAGONS = [int(p) for p in cells_at(1) if h3i.is_pentagon(int(p))][:3]  # these share chunks with others
REGIONS = HEXAGONS + PENTAGONS
SOURCE = "00000000000000aa"


def _layout() -> ProductLayout:
    return ProductLayout.build(np.array(REGIONS, dtype=np.uint64), 3, 1)


def _vectors(region: int, salt: int) -> np.ndarray:
    rows = _layout().rows_of(region)
    rng = np.random.default_rng([region % 2**32, salt])
    v = rng.normal(size=(rows.stop - rows.start, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write(args: tuple[str, int, int]) -> str:
    path, region, salt = args
    vectors = _vectors(region, salt)
    return write_product_region(path, _layout(), region, embedding=vectors, status=np.zeros(len(vectors), np.uint8),
                                model_version=f"{salt + 1:016x}", source_version=SOURCE)


def _check_every_region_whole(path: str) -> dict[int, int]:
    """Each region's rows come from one write (or none yet); its model version is in the lineage. Returns
    {region: salt} of the regions written."""
    ds = open_product(path)
    layout, seen = _layout(), {}
    recorded = set(ds.attrs["model_versions"])
    for region in REGIONS:
        rows = layout.rows_of(region)
        versions = np.unique(ds["model_version"].values[rows])
        assert len(versions) == 1, f"region {region:x} holds rows of {len(versions)} writes"
        if versions[0] == 0:
            assert np.isnan(ds["embedding"].values[rows]).all()
            continue
        version = decode_version(versions[0])
        assert version in recorded, f"region {region:x}: {version} missing from the store's lineage"
        salt = int(version, 16) - 1
        np.testing.assert_allclose(ds["embedding"].values[rows], _vectors(region, salt), err_msg=f"{region:x}")
        seen[region] = salt
    return seen


def test_concurrent_writers_on_s3_lose_nothing(s3):
    path = f"s3://{BUCKET}/products/t/embeddings.zarr"
    ensure_product_store(path, _layout(), DIM, {"product": "t"})
    jobs = [(path, region, salt) for salt, region in enumerate(REGIONS)]
    with ProcessPoolExecutor(6, mp_context=multiprocessing.get_context("spawn")) as pool:
        snapshots = list(pool.map(_write, jobs))
    assert len(set(snapshots)) == len(jobs)  # every write is its own commit
    written = _check_every_region_whole(path)
    assert written == {region: salt for _, region, salt in jobs}
    assert sorted(open_product(path).attrs["model_versions"]) == sorted(f"{s + 1:016x}" for _, _, s in jobs)
    history = list(open_repository(path).ancestry(branch="main"))
    assert len(history) == len(jobs) + 2  # the repository's first commit, the layout, one per write


def _writer_loop(path: str, seed: int) -> None:
    """Write regions with fresh salts forever (until killed)."""
    rng = random.Random(seed)
    while True:
        _write((path, rng.choice(REGIONS), rng.randrange(1, 2**20)))


def test_writers_killed_mid_write_or_commit_leave_whole_snapshots(s3):
    path = f"s3://{BUCKET}/products/k/embeddings.zarr"
    ensure_product_store(path, _layout(), DIM, {"product": "k"})
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}  # the writers import this module
    repo = open_repository(path)
    for round_ in range(4):
        tip = repo.lookup_branch("main")
        writers = [subprocess.Popen([sys.executable, __file__, path, str(round_ * 10 + i)], env=env) for i in range(3)]
        deadline = time.monotonic() + 120
        while repo.lookup_branch("main") == tip:  # past start-up: the writers are committing
            assert time.monotonic() < deadline, "no writer committed within 120 s"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.1, 1.5))  # then a random moment of their writes and commits
        for writer in writers:
            writer.send_signal(signal.SIGKILL)
        for writer in writers:
            writer.wait(timeout=30)
        _check_every_region_whole(path)
    # The store takes new writes after all that, and they land whole.
    _write((path, REGIONS[0], 0))
    assert _check_every_region_whole(path)[REGIONS[0]] == 0
    session = icechunk.Repository.open(icechunk.s3_storage(
        bucket=BUCKET, prefix="products/k/embeddings.zarr", from_env=True, endpoint_url=s3["endpoint"],
        allow_http=True, force_path_style=True)).readonly_session("main")
    assert session.snapshot_id == open_product(path).attrs["snapshot"]


def test_a_partition_store_on_s3_is_replaced_whole_or_not_at_all(s3):
    """Stores one writer writes whole (a tile's datacube, a region's samples) are one commit on S3: a write
    that fails half-way leaves the previous store as it was."""
    path = f"s3://{BUCKET}/products/p/datacube.zarr"
    first = xr.Dataset({"reflectance": (("chip", "x"), np.ones((4, 3), np.float32))})
    write_dataset(path, first)
    with pytest.raises(RuntimeError, match="died half-way"):
        with staged_store(path) as target:
            xr.Dataset({"reflectance": (("chip", "x"), np.zeros((4, 3), np.float32))}).to_zarr(
                target, mode="w", zarr_format=3, consolidated=False)
            raise RuntimeError("the writer died half-way")
    np.testing.assert_array_equal(open_store(path, "datacube")["reflectance"].values, 1)
    write_dataset(path, first * 2)
    np.testing.assert_array_equal(open_store(path, "datacube")["reflectance"].values, 2)
    assert len(list(open_repository(path).ancestry(branch="main"))) == 3  # created, written, rewritten


if __name__ == "__main__":  # a writer process of the kill test
    _writer_loop(sys.argv[1], int(sys.argv[2]))
