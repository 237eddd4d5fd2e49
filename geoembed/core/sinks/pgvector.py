"""PostgreSQL tables for embedding products (pgvector), given an open psycopg 3 connection.

Model versions coexist as one table per (product, model version), ``geoembed."<product>_<version>"``,
listed in ``geoembed.model_tables``. Similarity is only meaningful between vectors of one model, so a
query names (or defaults to the newest) model version and never mixes tables. Identifiers are
composed with ``psycopg.sql``; every user value travels as a query parameter.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Sequence

import h3.api.basic_int as h3i

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

SCHEMA = "geoembed"


class DimensionMismatchError(ValueError):
    """The model's embedding dimension differs from the existing table's."""


def table_name(product: str, model_version: str) -> str:
    return f"{product}_{model_version}"


def ensure_schema(conn: psycopg.Connection) -> bool:
    """The vector extension (and PostGIS where the server has it), the schema and the registry of
    model tables (idempotent). Returns True if PostGIS is available."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    postgis = _ensure_postgis(conn)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL(
        """CREATE TABLE IF NOT EXISTS {}.model_tables (
               product text NOT NULL,
               model_version text NOT NULL,
               dim integer NOT NULL,
               resolution integer NOT NULL,
               has_geometry boolean NOT NULL,
               table_name text NOT NULL,
               created_at timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (product, model_version))"""
    ).format(sql.Identifier(SCHEMA)))
    register_vector(conn)
    return postgis


def _ensure_postgis(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").fetchone():
        return True
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'").fetchone():
        return False
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    except psycopg.errors.InsufficientPrivilege:
        return False  # available but not ours to create: ask the DBA, work without geometry meanwhile
    return True


def has_postgis(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").fetchone() is not None


def hexagon_ewkb(cell: int) -> bytes:
    """The cell's boundary as an EWKB polygon in EPSG:4326 (lon, lat), closed. Cells crossing the
    antimeridian are unwrapped around their centre (longitudes just past +-180)."""
    ring = np.array(h3i.cell_to_boundary(int(cell)))[:, ::-1]
    centre_lon = h3i.cell_to_latlng(int(cell))[1]
    ring[:, 0] += np.where(ring[:, 0] - centre_lon > 180, -360, np.where(ring[:, 0] - centre_lon < -180, 360, 0))
    ring = np.vstack([ring, ring[:1]])
    header = struct.pack("<BIIII", 1, 3 | 0x20000000, 4326, 1, len(ring))
    return header + ring.astype("<f8").tobytes()


def ensure_embedding_table(
    conn: psycopg.Connection, product: str, model_version: str, dim: int, resolution: int
) -> str:
    """Create the table of one model version (with a GiST-indexed hexagon geometry where PostGIS is
    available), or check the existing one's dimension first."""
    name = table_name(product, model_version)
    row = conn.execute(
        "SELECT dim FROM geoembed.model_tables WHERE product = %s AND model_version = %s", (product, model_version)
    ).fetchone()
    if row is not None:
        if row[0] != dim:
            raise DimensionMismatchError(
                f"table {SCHEMA}.{name} holds {row[0]}-d embeddings but model {model_version} makes {dim}-d ones; "
                "nothing was written"
            )
        return name
    table = sql.Identifier(SCHEMA, name)
    postgis = has_postgis(conn)
    conn.execute(sql.SQL(
        """CREATE TABLE IF NOT EXISTS {table} (
               h3 bigint PRIMARY KEY,
               region bigint NOT NULL,
               lon double precision NOT NULL,
               lat double precision NOT NULL,
               model_version text NOT NULL,
               source_version text NOT NULL,
               embedding vector({dim}) NOT NULL{geometry})"""
    ).format(table=table, dim=sql.Literal(int(dim)), geometry=sql.SQL(
        ",\n               geom geometry(Polygon, 4326) NOT NULL" if postgis else "")))
    if postgis:
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gist (geom)").format(
            sql.Identifier(f"{name}_geom"), table))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (region)").format(
        sql.Identifier(f"{name}_region"), table))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (lat, lon)").format(
        sql.Identifier(f"{name}_latlon"), table))
    conn.execute(
        "INSERT INTO geoembed.model_tables (product, model_version, dim, resolution, has_geometry, table_name) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (product, model_version, int(dim), int(resolution), postgis, name),
    )
    return name


@dataclass
class RegionRows:
    """One region's embedded cells, ready to load."""

    region: int
    cells: np.ndarray  # uint64
    lon: np.ndarray
    lat: np.ndarray
    embedding: np.ndarray  # (n, dim) float32
    model_version: str
    source_version: str | Sequence[str]  # one for every row, or per row (mosaics: the file each came from)


def replace_region(conn: psycopg.Connection, table: str, rows: RegionRows) -> float:
    """Replace exactly one region's rows in one transaction: DELETE, then binary COPY.

    A failure rolls back to the previous rows; readers never see a half-replaced region.
    Returns the seconds spent."""
    start = time.perf_counter()
    ident = sql.Identifier(SCHEMA, table)
    geometry = table_has_geometry(conn, table)
    columns = ["h3", "region", "lon", "lat", "model_version", "source_version", "embedding"]
    if geometry:
        columns.append("geom")
    payload = copy_payload(rows, with_geometry=geometry)
    with conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {} WHERE region = %s").format(ident), (int(rows.region),))
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(
            ident, sql.SQL(", ").join(map(sql.Identifier, columns)))
        with conn.cursor().copy(copy_sql) as copy:
            copy.write(payload)
    return time.perf_counter() - start


def _text_fields(name: str, text: bytes) -> list[tuple[str, str]]:
    """A text column: its length, then its bytes (none for an empty string)."""
    return [(f"l_{name}", ">i4")] + ([(name, f"V{len(text)}")] if text else [])


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


def copy_payload(rows: RegionRows, with_geometry: bool = False) -> bytes:
    """The binary COPY stream for a region's rows, built with numpy in one go.

    Every row has the same layout (bigint, bigint, float8, float8, text, text, vector(dim)
    [, geometry]), so rows are records of one big-endian structured dtype: no per-row Python.
    Geometries differ in length (hexagons, pentagons, cells cut by icosahedron edges), so rows are
    grouped by geometry length, each group one structured array."""
    vectors = np.asarray(rows.embedding, dtype=np.float32)
    n = len(rows.cells)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"region {rows.region:x}: {n} cells but embeddings of shape {vectors.shape}")
    dim = vectors.shape[1]
    model = rows.model_version.encode()
    per_row = [rows.source_version] * n if isinstance(rows.source_version, str) else list(rows.source_version)
    if len(per_row) != n:
        raise ValueError(f"region {rows.region:x}: {n} cells but {len(per_row)} source versions")
    source_of_row = np.array([v.encode() for v in per_row], dtype=object)
    geometries = [hexagon_ewkb(int(c)) for c in rows.cells] if with_geometry else None
    lengths = np.array([len(g) for g in geometries]) if geometries else np.zeros(n, dtype=int)
    # Rows are grouped by everything that changes the record layout: geometry and source text lengths.
    source_lengths = np.array([len(v) for v in source_of_row], dtype=int)
    parts = [_COPY_HEADER]
    for length, source_length in sorted({(int(a), int(b)) for a, b in zip(lengths, source_lengths)}):
        index = np.nonzero((lengths == length) & (source_lengths == source_length))[0]
        source = b"x" * source_length  # the layout; the values are filled per row below
        fields = [("count", ">i2"),
                  ("l_h3", ">i4"), ("h3", ">i8"), ("l_region", ">i4"), ("region", ">i8"),
                  ("l_lon", ">i4"), ("lon", ">f8"), ("l_lat", ">i4"), ("lat", ">f8"),
                  *_text_fields("model", model), *_text_fields("source", source),
                  ("l_vec", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vec", ">f4", (dim,))]
        if geometries:
            fields += [("l_geom", ">i4"), ("geom", f"V{int(length)}")]
        block = np.zeros(len(index), dtype=np.dtype(fields))
        block["count"] = 8 if geometries else 7
        block["l_h3"] = block["l_region"] = block["l_lon"] = block["l_lat"] = 8
        block["h3"] = np.asarray(rows.cells, dtype=np.uint64)[index].astype(np.int64)
        block["region"] = int(rows.region)
        block["lon"] = np.asarray(rows.lon, dtype=np.float64)[index]
        block["lat"] = np.asarray(rows.lat, dtype=np.float64)[index]
        block["l_model"] = len(model)
        if model:
            block["model"] = np.frombuffer(model, dtype=f"V{len(model)}")[0]
        block["l_source"] = source_length
        if source_length:
            block["source"] = np.frombuffer(b"".join(source_of_row[index]), dtype=f"V{source_length}")
        block["l_vec"], block["dim"] = 4 + 4 * dim, dim
        block["vec"] = vectors[index]
        if geometries:
            block["l_geom"] = int(length)
            block["geom"] = np.frombuffer(b"".join(geometries[i] for i in index), dtype=f"V{int(length)}")
        parts.append(block.tobytes())
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def table_has_geometry(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s AND column_name = 'geom'",
        (SCHEMA, table)).fetchone() is not None


def build_hnsw_index(conn: psycopg.Connection, table: str, m: int = 16, ef_construction: int = 64) -> bool:
    """Build the cosine HNSW index after a bulk load (no-op if present). Returns True if built."""
    index = f"{table}_hnsw"
    exists = conn.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                          (SCHEMA, index)).fetchone()
    if exists:
        return False
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute(sql.SQL(
        "CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
    ).format(sql.Identifier(index), sql.Identifier(SCHEMA, table), sql.Literal(m), sql.Literal(ef_construction)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, table)))
    return True


@dataclass(frozen=True)
class ModelTable:
    table: str
    model_version: str
    dim: int
    resolution: int
    has_geometry: bool


def latest_model_table(conn: psycopg.Connection, product: str, model_version: str | None = None) -> ModelTable:
    """The table of a product's newest model version, or of the one named."""
    columns = ("SELECT table_name, model_version, dim, resolution, has_geometry FROM geoembed.model_tables "
               "WHERE product = %s")
    if model_version:
        row = conn.execute(columns + " AND model_version = %s", (product, model_version)).fetchone()
    else:
        row = conn.execute(columns + " ORDER BY created_at DESC LIMIT 1", (product,)).fetchone()
    if row is None:
        which = f"model version {model_version!r} of " if model_version else ""
        raise LookupError(f"no table for {which}product {product!r} in the database; materialize embedding_table")
    return ModelTable(*row)


def count_rows(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, table))).fetchone()[0]


TIE_TOLERANCE = 1e-6


def exact_neighbours(conn: psycopg.Connection, table: str, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Exact k nearest (h3, cosine distance), by sequential scan: the ground truth for recall."""
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(sql.SQL("SELECT h3, embedding <=> %s FROM {} ORDER BY embedding <=> %s LIMIT %s").format(
            sql.Identifier(SCHEMA, table)), (query, query, k), prepare=False).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def ann_neighbours(
    conn: psycopg.Connection, table: str, query: np.ndarray, k: int, ef_search: int = 100
) -> list[tuple[int, float]]:
    """Approximate k nearest (h3, cosine distance) through the HNSW index."""
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(int(ef_search))))
        rows = conn.execute(sql.SQL("SELECT h3, embedding <=> %s FROM {} ORDER BY embedding <=> %s LIMIT %s").format(
            sql.Identifier(SCHEMA, table)), (query, query, k), prepare=False).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def recall(found_distances: list[float], exact_distances: list[float], k: int) -> float:
    """Recall@k that is fair to ties: a found neighbour counts if it is no farther than the exact k-th.

    Many cells share one embedding (every all-water window, say); any of them is a right answer."""
    if not exact_distances:
        return 1.0
    kth = exact_distances[min(k, len(exact_distances)) - 1]
    hits = sum(d <= kth + TIE_TOLERANCE for d in found_distances[:k])
    return min(hits, len(exact_distances)) / min(k, len(exact_distances))


def recall_at_k(conn: psycopg.Connection, table: str, n_queries: int = 100, k: int = 10, seed: int = 0) -> float:
    """Mean recall@k of the ANN index against exact search, over random query cells of the table."""
    ident = sql.Identifier(SCHEMA, table)
    conn.execute("SELECT setseed(%s)", (((seed % 1000) / 1000.0),))
    queries = conn.execute(sql.SQL("SELECT embedding FROM {} ORDER BY random() LIMIT %s").format(ident),
                           (n_queries,)).fetchall()
    scores = []
    for (vector,) in queries:
        exact = [d for _, d in exact_neighbours(conn, table, vector, k)]
        found = [d for _, d in ann_neighbours(conn, table, vector, k)]
        scores.append(recall(found, exact, k))
    return float(np.mean(scores)) if scores else 0.0
