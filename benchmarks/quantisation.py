"""Compact embeddings: storage, search recall and held-out quality of int8 and float16 against float32.

    python -m benchmarks.quantisation --product modis_global [--queries 2000] [--no-postgres]

Reads the product's float32 embeddings from its Zarr store under $GEOEMBED_DATA_DIR (materialize the
product first) and, in the same run on the same vectors, compares:

* float32 (the reference), float16 (what pgvector's ``halfvec`` stores), int8 with one scale per vector
  (what the int8 product stores) and int8 with one scale per dimension;
* bytes per vector, and the size of each as a compressed Zarr array (zarr v3 defaults);
* recall@10 of exact cosine search on the compact vectors against exact float32 search (ties counted
  fairly: a neighbour as close as the exact 10th is right), over random query cells;
* held-out quality: every task of ``evaluate_features`` on the dequantised vectors, split by the held-out
  regions the product's current model recorded;
* PostgreSQL (an embedded throw-away server): the same rows as ``vector`` and as ``halfvec`` with their
  HNSW indexes: table + index size, recall@10 against exact float32 search, p50 query latency.

Writes bench-results/quantisation_<product>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from benchmarks import write_results
from geoembed.core.evaluation import HeldOutTargets, evaluate_features
from geoembed.core.quantise import dequantise, quantise_int8
from geoembed.core.sinks.pgvector import recall
from geoembed.landcover.stores import embedding_array, open_product, open_samples
from geoembed.landcover.windows import EMBEDDED

REPO = Path(__file__).resolve().parents[1]
K = 10


def product_vectors(data_dir: Path, product: str) -> tuple[np.ndarray, np.ndarray]:
    ds = open_product(data_dir / product / "embeddings.zarr")
    keep = np.isin(ds["status"].values, EMBEDDED)
    return ds["cell_ids"].values[keep], embedding_array(ds).values[keep]


def variants(vectors: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    """Each compact form dequantised to unit float32 vectors, with its bytes per vector."""
    n, d = vectors.shape
    per_vector = quantise_int8(vectors, "vector")
    per_dimension = quantise_int8(vectors, "dimension")
    half = vectors.astype(np.float16).astype(np.float32)
    return {
        "float32": (vectors, 4 * d),
        "float16 (halfvec)": (half / np.linalg.norm(half, axis=1, keepdims=True), 2 * d),
        "int8, scale per vector": (dequantise(per_vector.codes, per_vector.scale, "vector"), d + 4),
        "int8, scale per dimension": (dequantise(per_dimension.codes, per_dimension.scale, "dimension"),
                                      d + 4 * d / n),
    }


def zarr_bytes(array: np.ndarray, folder: Path, name: str) -> int:
    path = folder / f"{name}.zarr"
    xr.Dataset({"v": (("cells", "d"), array)}).chunk({"cells": 65_536}).to_zarr(path, zarr_format=3, mode="w",
                                                                                consolidated=False)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine distances of the k nearest rows of each query row (itself excluded)."""
    ids, dists = [], []
    for start in range(0, len(queries), 256):
        q = queries[start:start + 256]
        d = 1.0 - vectors[q] @ vectors.T
        d[np.arange(len(q)), q] = np.inf
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(axis=1)
        top = np.take_along_axis(part, order, 1)
        ids.append(top)
        dists.append(np.take_along_axis(d, top, 1))
    return np.concatenate(ids), np.concatenate(dists)


def search_recall(reference: np.ndarray, compact: np.ndarray, queries: np.ndarray) -> float:
    """Mean recall@10 of exact search on ``compact`` against exact search on ``reference``, judged by the
    reference's own distances (fair to ties)."""
    _, exact = exact_neighbours(reference, queries, K)
    found, _ = exact_neighbours(compact, queries, K)
    scores = [recall(list(1.0 - reference[found[i]] @ reference[q]), list(exact[i]), K)
              for i, q in enumerate(queries)]
    return float(np.mean(scores))


def held_out_targets(data_dir: Path, product: str, cells: np.ndarray) -> tuple[HeldOutTargets, np.ndarray]:
    """Dominant class and class fractions of every embedded cell (from the samples), and which cells lie in
    the held-out regions of the product's current model."""
    folder = data_dir / product
    current = json.loads((folder / "models" / "current.json").read_text())
    metrics = json.loads((Path(current["folder"]) / "metrics.json").read_text())
    held_out = set(metrics["held_out_regions"])
    index = {int(c): i for i, c in enumerate(cells)}
    dominant = np.full(len(cells), -1, dtype=np.int64)
    fractions = None
    in_held_out = np.zeros(len(cells), dtype=bool)
    for path in sorted((folder / "samples").glob("*.zarr")):
        ds = open_samples(path)
        keep = np.isin(ds["status"].values, EMBEDDED)
        rows = np.array([index.get(int(c), -1) for c in ds["cell_ids"].values[keep]])
        ok = rows >= 0
        if fractions is None:
            fractions = np.zeros((len(cells), ds.sizes["class"]), dtype=np.float32)
        dominant[rows[ok]] = ds["dominant_class"].values[keep][ok]
        fractions[rows[ok]] = ds["fractions"].values[keep][ok]
        in_held_out[rows[ok]] = path.stem in held_out
    return HeldOutTargets(dominant, fractions), in_held_out


def postgres_compact_search(vectors: np.ndarray, queries: np.ndarray) -> dict[str, dict]:
    """The same rows as vector(d) and halfvec(d) with HNSW indexes in a throw-away embedded server."""
    import psycopg
    from pgvector.psycopg import register_vector

    from geoembed_resources.postgres import embedded_server

    n, d = vectors.shape
    _, exact = exact_neighbours(vectors, queries, K)
    out = {}
    with tempfile.TemporaryDirectory() as tmp, embedded_server(Path(tmp) / "pg") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            for kind, ops in (("vector", "vector_cosine_ops"), ("halfvec", "halfvec_cosine_ops")):
                table = f"bench_{kind}"
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, embedding {kind}({d}) NOT NULL)")
                with conn.cursor().copy(f"COPY {table} (id, embedding) FROM STDIN") as copy:
                    for i, v in enumerate(vectors):
                        copy.write_row((i, "[" + ",".join(f"{x:.8g}" for x in v) + "]"))
                start = time.perf_counter()
                conn.execute(f"CREATE INDEX ON {table} USING hnsw (embedding {ops})")
                build = time.perf_counter() - start
                conn.execute("SET hnsw.ef_search = 100")
                size = conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0]
                scores, latencies = [], []
                for i, q in enumerate(queries[:500]):
                    literal = "[" + ",".join(f"{x:.8g}" for x in vectors[q]) + "]"
                    start = time.perf_counter()
                    ids = [r[0] for r in conn.execute(
                        f"SELECT id FROM {table} WHERE id <> %s ORDER BY embedding <=> %s::{kind} LIMIT {K}",
                        (int(q), literal)).fetchall()]
                    latencies.append(time.perf_counter() - start)
                    scores.append(recall(list(1.0 - vectors[ids] @ vectors[q]), list(exact[i]), K))
                out[kind] = {"table_and_index_bytes": int(size), "hnsw_build_seconds": round(build, 1),
                             "recall_at_10": round(float(np.mean(scores)), 4),
                             "p50_ms": round(1000 * statistics.median(latencies), 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", default="modis_global")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    data_dir = Path(os.environ.get("GEOEMBED_DATA_DIR", str(REPO / "data")))
    cells, vectors = product_vectors(data_dir, args.product)
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(len(cells), size=min(args.queries, len(cells)), replace=False))
    targets, held_out = held_out_targets(data_dir, args.product, cells)
    train = np.sort(rng.choice(np.nonzero(~held_out)[0], size=min(30_000, int((~held_out).sum())), replace=False))
    test = np.sort(rng.choice(np.nonzero(held_out)[0], size=min(30_000, int(held_out.sum())), replace=False))
    print(f"{args.product}: {len(cells):,} embedded cells, {vectors.shape[1]} dimensions; {len(queries):,} queries; "
          f"held-out evaluation on {len(test):,} cells")
    results = {"product": args.product, "cells": int(len(cells)), "dim": int(vectors.shape[1]), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dense, per_vector) in variants(vectors).items():
            stored = {"float32": vectors, "float16 (halfvec)": vectors.astype(np.float16)}.get(name)
            if stored is None:
                q = quantise_int8(vectors, "vector" if "vector" in name else "dimension")
                stored = q.codes
            scores = evaluate_features(dense[train], targets.rows(train), dense[test], targets.rows(test))
            row = {"bytes_per_vector": round(per_vector, 2), "zarr_bytes": zarr_bytes(stored, Path(tmp), str(len(name))),
                   "recall_at_10_vs_float32": round(search_recall(vectors, dense, queries), 4),
                   "held_out": {k: round(v, 4) for k, v in scores.items()}}
            results["variants"][name] = row
            print(f"  {name:28s} {row['bytes_per_vector']:>7} B/vector, Zarr {row['zarr_bytes'] / 1e6:7.2f} MB, "
                  f"recall@10 {row['recall_at_10_vs_float32']:.4f}, held-out kNN balanced accuracy "
                  f"{scores['knn5_balanced_accuracy']:.4f}, fractions R² {scores['class_fractions_linear_r2']:.4f}, "
                  f"p@10 {scores['retrieval_precision_at_10']:.4f}")
    if not args.no_postgres:
        results["postgres"] = postgres_compact_search(vectors, queries)
        for kind, row in results["postgres"].items():
            print(f"  PostgreSQL {kind:8s}: table + HNSW {row['table_and_index_bytes'] / 1e6:.1f} MB, build "
                  f"{row['hnsw_build_seconds']} s, recall@10 {row['recall_at_10']:.4f} vs exact float32, p50 "
                  f"{row['p50_ms']} ms (ef_search 100)")
    write_results(f"quantisation_{args.product}", results)


if __name__ == "__main__":
    main()
