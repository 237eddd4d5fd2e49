"""PostgreSQL tables for embedding products (pgvector), given an open psycopg 3 connection.

Model versions coexist as one table per (product, model version), ``geoembed."<product>_<version>"``,
listed in ``geoembed.model_tables``. Similarity is only meaningful between vectors of one model, so a
query names (or defaults to the newest) model version and never mixes tables. Identifiers are
composed with ``psycopg.sql``; every user value travels as a query parameter.
"""

from __future__ import annotations

import hashlib
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import h3.api.basic_int as h3i

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

SCHEMA = "geoembed"


class DimensionMismatchError(ValueError):
    """The model's embedding dimension differs from the existing table's."""


# Runs writing at once may create the same objects. CREATE ... IF NOT EXISTS is not safe against itself in
# PostgreSQL (two creators race in the catalog: "duplicate key value violates unique constraint
# pg_type_typname_nsp_index"), so every creation happens in a transaction holding this advisory lock.
DDL_LOCK_KEY = 0x67656F656D626564  # b"geoembed"


@contextmanager
def _ddl_transaction(conn: psycopg.Connection) -> Iterator[None]:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
        yield


# With a second key, the hash of a table's name: loads adding to that table's distinct vectors take turns.
VECTORS_LOCK_CLASS = 0x76656373  # b"vecs"

ddl_transaction = _ddl_transaction  # for other pipelines' tables (the ranking models and predictions)


def table_name(product: str, model_version: str) -> str:
    return f"{product}_{model_version}"


def ensure_schema(conn: psycopg.Connection) -> bool:
    """The vector extension (and PostGIS where the server has it), the schema and the registry of
    model tables (idempotent). Returns True if PostGIS is available."""
    with _ddl_transaction(conn):
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
        # The kind of rows (H3 cells or chips); registries made before chips existed hold cells only.
        conn.execute(sql.SQL("ALTER TABLE {}.model_tables ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'h3_cells'")
                     .format(sql.Identifier(SCHEMA)))
        # What a kind needs to know besides (e.g. a chip table's chip size, to find the chip at a point).
        conn.execute(sql.SQL("ALTER TABLE {}.model_tables ADD COLUMN IF NOT EXISTS meta jsonb NOT NULL DEFAULT '{{}}'")
                     .format(sql.Identifier(SCHEMA)))
    register_vector(conn)
    return postgis


def _ensure_postgis(conn: psycopg.Connection) -> bool:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").fetchone():
        return True
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'").fetchone():
        return False
    try:
        with conn.transaction():  # a savepoint: a refusal leaves the enclosing transaction usable
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


@dataclass(frozen=True)
class TableLayout:
    """What one kind of embedding table holds besides the common columns (lon, lat, model and source
    versions, embedding, geometry): its key column, the partition column whose rows are replaced
    together, and extra columns."""

    kind: str
    key: str
    partition: str
    extra: tuple[tuple[str, str], ...] = ()  # (name, SQL type: bigint, text or date)
    geometry_type: str = "Polygon"
    # H3 cells: a partition's keys are one range of the key index (a region's descendants at one resolution
    # are consecutive H3 ids), so replacing a partition needs no index of its own during a bulk load.
    partition_is_key_range: bool = False


# H3 cells: key = the cell, partition = its coarse region. Chips: key = chip (tile, date, row, col),
# partition = the scene (tile, date); ``h3`` is the chip centre's cell (area filters), ``place`` the chip
# without its date (the same ground on every date).
H3_CELLS = TableLayout("h3_cells", "h3", "region", partition_is_key_range=True)
CHIPS = TableLayout("chips", "chip", "scene", (("h3", "bigint"), ("place", "bigint"), ("tile", "text"),
                                               ("acquired", "date"), ("chip_id", "text")), "Geometry")
LAYOUTS = {layout.kind: layout for layout in (H3_CELLS, CHIPS)}


def ensure_embedding_table(
    conn: psycopg.Connection, product: str, model_version: str, dim: int, resolution: int,
    layout: TableLayout = H3_CELLS, meta: dict | None = None,
) -> str:
    """Create the table of one model version (with a GiST-indexed geometry where PostGIS is available),
    or check the existing one's dimension first. ``resolution``: the H3 resolution of its ``h3`` column."""
    with _ddl_transaction(conn):
        return _ensure_embedding_table(conn, product, model_version, dim, resolution, layout, meta)


def _ensure_embedding_table(
    conn: psycopg.Connection, product: str, model_version: str, dim: int, resolution: int, layout: TableLayout,
    meta: dict | None,
) -> str:
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
        if not _has_column(conn, name, "vector_id"):
            _add_vector_ids(conn, name, layout, dim)
        return name
    table = sql.Identifier(SCHEMA, name)
    postgis = has_postgis(conn)
    extra = sql.SQL("").join(sql.SQL(",\n               {} {} NOT NULL").format(sql.Identifier(c), sql.SQL(t))
                             for c, t in layout.extra)
    conn.execute(sql.SQL(
        """CREATE TABLE IF NOT EXISTS {table} (
               {key} bigint PRIMARY KEY,
               {partition} bigint NOT NULL{extra},
               lon double precision NOT NULL,
               lat double precision NOT NULL,
               model_version text NOT NULL,
               source_version text NOT NULL,
               vector_id bigint NOT NULL,
               embedding vector({dim}) NOT NULL{geometry})"""
    ).format(table=table, key=sql.Identifier(layout.key), partition=sql.Identifier(layout.partition), extra=extra,
             dim=sql.Literal(int(dim)), geometry=sql.SQL(
                 f",\n               geom geometry({layout.geometry_type}, 4326) NOT NULL" if postgis else "")))
    _ensure_vectors_table(conn, name, dim)
    # The search indexes come after the bulk load (``build_search_indexes``): maintaining them row by row
    # made the load 3x slower than COPY into the bare table. Only what replacing a partition needs is here.
    if not layout.partition_is_key_range:
        conn.execute(_partition_index(name, layout))
    conn.execute(
        "INSERT INTO geoembed.model_tables (product, model_version, dim, resolution, has_geometry, table_name, kind, "
        "meta) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (product, model_version, int(dim), int(resolution), postgis, name, layout.kind, Jsonb(meta or {})),
    )
    return name


def vectors_table(table: str) -> str:
    """The table of a model table's distinct embeddings: many rows share one vector (every all-water
    window, say), and an HNSW graph over copies of one point serves them badly (queries near a large group
    of identical vectors come back with ten copies of one far-away point). Cells point to their vector by
    ``vector_id``; the index is built over distinct vectors."""
    return f"{table}_vectors"


def vector_ids(vectors: np.ndarray) -> np.ndarray:
    """A 63-bit id per row: the same for identical float32 vectors, different otherwise (blake2b of the
    row's bytes)."""
    rows = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)) + np.float32(0.0)  # -0.0 is 0.0
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    # Hash slices of one buffer, every row: converting numpy rows to bytes one by one, or finding the
    # distinct rows first (a sort of byte strings), each cost more than the hashing itself.
    width = rows.itemsize * int(np.prod(rows.shape[1:]))
    buffer, blake2b = memoryview(rows.tobytes()), hashlib.blake2b
    digests = b"".join([blake2b(buffer[i : i + width], digest_size=8).digest()
                        for i in range(0, len(buffer), width)])
    return (np.frombuffer(digests, dtype=">u8") >> np.uint64(1)).astype(np.int64)


def _has_column(conn: psycopg.Connection, table: str, column: str) -> bool:
    return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                        "AND column_name = %s", (SCHEMA, table, column)).fetchone() is not None


def _ensure_vectors_table(conn: psycopg.Connection, name: str, dim: int) -> None:
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (vector_id bigint PRIMARY KEY, embedding vector({}) NOT NULL)")
                 .format(sql.Identifier(SCHEMA, vectors_table(name)), sql.Literal(int(dim))))


def _partition_index(name: str, layout: TableLayout) -> sql.Composed:
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(f"{name}_{layout.partition}"), sql.Identifier(SCHEMA, name), sql.Identifier(layout.partition))


def search_index_statements(name: str, layout: TableLayout, postgis: bool) -> list[sql.Composed]:
    """The row table's indexes that searches, area filters and maps use (idempotent statements)."""
    table = sql.Identifier(SCHEMA, name)
    statements = [
        _partition_index(name, layout),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (lat, lon)").format(sql.Identifier(f"{name}_latlon"), table),
        # (vector_id, key): a search takes the first k rows of a vector without reading all that share it.
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (vector_id, {})").format(
            sql.Identifier(f"{name}_vector_key"), table, sql.Identifier(layout.key)),
    ]
    if postgis:
        statements.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gist (geom)").format(
            sql.Identifier(f"{name}_geom"), table))
    if layout.key != "h3" and "h3" in dict(layout.extra):
        statements.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (h3)").format(
            sql.Identifier(f"{name}_h3"), table))
    return statements


def ensure_vector_ids(conn: psycopg.Connection, found: "ModelTable") -> bool:
    """Give a table made before distinct-vector indexing its vector ids (True if it had to)."""
    if _has_column(conn, found.table, "vector_id"):
        return False
    _add_vector_ids(conn, found.table, found.layout, found.dim)
    return True


def _add_vector_ids(conn: psycopg.Connection, name: str, layout: TableLayout, dim: int) -> None:
    """Bring a table made before distinct-vector indexing up to date: every row gets its vector id and
    every distinct vector its row (in batches, in one transaction)."""
    table = sql.Identifier(SCHEMA, name)
    with conn.transaction():
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS vector_id bigint").format(table))
        _ensure_vectors_table(conn, name, dim)
        conn.execute("CREATE TEMP TABLE vector_ids (key bigint PRIMARY KEY, vector_id bigint NOT NULL) ON COMMIT DROP")
        cursor = conn.cursor(name="geoembed_rows")
        cursor.execute(sql.SQL("SELECT {}, embedding FROM {}").format(sql.Identifier(layout.key), table))
        while batch := cursor.fetchmany(50_000):
            keys = np.array([r[0] for r in batch], dtype=np.int64)
            vectors = np.array([np.asarray(r[1].to_numpy() if hasattr(r[1], "to_numpy") else r[1], np.float32)
                                for r in batch])
            ids = vector_ids(vectors)
            with conn.cursor().copy("COPY vector_ids (key, vector_id) FROM STDIN") as copy:
                for key, vid in zip(keys.tolist(), ids.tolist()):
                    copy.write_row((key, vid))
            _upsert_vectors(conn, name, ids, vectors)
        cursor.close()
        conn.execute(sql.SQL("UPDATE {} AS t SET vector_id = v.vector_id FROM vector_ids AS v WHERE t.{} = v.key")
                     .format(table, sql.Identifier(layout.key)))
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN vector_id SET NOT NULL").format(table))


def _upsert_vectors(conn: psycopg.Connection, name: str, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Add the distinct vectors not in the vectors table yet. Under a lock of the table's own (loads that
    share vectors take turns here, at the end of their transactions) the ids already present are looked up
    and only the others are COPYed in: staging every vector for an INSERT ... ON CONFLICT wrote each twice."""
    distinct, first = np.unique(ids, return_index=True)
    table = sql.Identifier(SCHEMA, vectors_table(name))
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (VECTORS_LOCK_CLASS, name))
    present = np.array([r[0] for r in conn.execute(sql.SQL("SELECT vector_id FROM {} WHERE vector_id = ANY(%s)")
                                                     .format(table), (distinct.tolist(),))], dtype=np.int64)
    new = ~np.isin(distinct, present)
    if not new.any():
        return
    payload = _vectors_payload(distinct[new], np.asarray(vectors, dtype=np.float32)[first[new]])
    with conn.cursor().copy(sql.SQL("COPY {} (vector_id, embedding) FROM STDIN WITH (FORMAT BINARY)")
                            .format(table)) as copy:
        copy.write(payload)


def _vectors_payload(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    block = np.zeros(len(ids), dtype=np.dtype([("count", ">i2"), ("l_id", ">i4"), ("id", ">i8"), ("l_vec", ">i4"),
                                                ("dim", ">i2"), ("unused", ">i2"), ("vec", ">f4", (dim,))]))
    block["count"], block["l_id"], block["id"] = 2, 8, ids
    block["l_vec"], block["dim"], block["vec"] = 4 + 4 * dim, dim, vectors
    return _COPY_HEADER + block.tobytes() + _COPY_TRAILER


@dataclass
class TableRows:
    """One partition's rows, ready to load into a table of ``layout``."""

    partition: int
    keys: np.ndarray  # int64 (or uint64 below 2**63)
    lon: np.ndarray
    lat: np.ndarray
    embedding: np.ndarray  # (n, dim) float32
    model_version: str
    source_version: str | Sequence[str]  # one for every row, or per row
    geometry: Callable[[], Sequence[bytes]] | None = None  # EWKB per row (EPSG:4326), computed when needed
    extra: dict[str, object] = field(default_factory=dict)  # values of the layout's extra columns


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

    def table_rows(self) -> TableRows:
        return TableRows(int(self.region), np.asarray(self.cells, dtype=np.uint64).astype(np.int64), self.lon,
                         self.lat, self.embedding, self.model_version, self.source_version,
                         geometry=lambda: [hexagon_ewkb(int(c)) for c in self.cells])


# Rows loaded per transaction when a run loads many small partitions (one H3 region is ~340 rows at res 4):
# a transaction per partition costs more than its rows, one per run could hold millions of rows in memory.
ROWS_PER_TRANSACTION = 100_000


def replace_partition(conn: psycopg.Connection, table: str, rows: TableRows, layout: TableLayout) -> float:
    """Replace exactly one partition's rows in one transaction: DELETE, then binary COPY.

    A failure rolls back to the previous rows; readers never see a half-replaced partition.
    Returns the seconds spent."""
    return replace_partitions(conn, table, [rows], layout)


def replace_partitions(conn: psycopg.Connection, table: str, parts: Sequence[TableRows], layout: TableLayout) -> float:
    """Replace the rows of several partitions in one transaction: one DELETE of them all, one binary COPY of
    their rows, one upsert of their distinct vectors. A failure rolls every one of them back to its previous
    rows. Returns the seconds spent."""
    start = time.perf_counter()
    ident = sql.Identifier(SCHEMA, table)
    geometry = table_has_geometry(conn, table)
    columns = [layout.key, layout.partition, *(c for c, _ in layout.extra), "lon", "lat", "model_version",
               "source_version", "vector_id", "embedding"] + (["geom"] if geometry else [])
    embeddings = (np.concatenate([np.asarray(p.embedding, dtype=np.float32) for p in parts])
                  if parts else np.zeros((0, 0), np.float32))
    ids = vector_ids(embeddings)
    payload = copy_partitions_payload(parts, layout, geometry, ids)
    with conn.transaction():
        _delete_partitions(conn, table, [int(p.partition) for p in parts], layout)
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(
            ident, sql.SQL(", ").join(map(sql.Identifier, columns)))
        with conn.cursor().copy(copy_sql) as copy:
            copy.write(payload)
        if len(ids):
            _upsert_vectors(conn, table, ids, embeddings)
    return time.perf_counter() - start


def _delete_partitions(conn: psycopg.Connection, table: str, partitions: list[int], layout: TableLayout) -> None:
    ident, partition = sql.Identifier(SCHEMA, table), sql.Identifier(layout.partition)
    if not layout.partition_is_key_range:
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(ident, partition), (partitions,))
        return
    resolution, _ = registered_layout(conn, table)
    first, last = zip(*(descendant_range(p, resolution) for p in partitions)) if partitions else ((), ())
    conn.execute(sql.SQL("DELETE FROM {} AS t USING unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS p(part, first, "
                         "last) WHERE t.{} BETWEEN p.first AND p.last AND t.{} = p.part").format(
        ident, sql.Identifier(layout.key), partition), (partitions, list(first), list(last)))


def registered_layout(conn: psycopg.Connection, table: str) -> tuple[int, TableLayout]:
    """The H3 resolution and the layout the registry records for a model table (registries made before chip
    tables existed have no ``kind``: cells)."""
    row = conn.execute("SELECT resolution, COALESCE(to_jsonb(m) ->> 'kind', 'h3_cells') FROM geoembed.model_tables "
                       "AS m WHERE table_name = %s", (table,)).fetchone()
    if row is None:
        raise LookupError(f"table {SCHEMA}.{table} is not in {SCHEMA}.model_tables; "
                          "create it with ensure_embedding_table")
    return int(row[0]), LAYOUTS[row[1]]


def descendant_range(region: int, resolution: int) -> tuple[int, int]:
    """The first and last H3 id of a cell's descendants at ``resolution``: they are consecutive ids (one
    digit prefix), so a key index finds them all in one range scan."""
    last = h3i.cell_to_children_size(region, resolution) - 1
    return h3i.child_pos_to_cell(region, resolution, 0), h3i.child_pos_to_cell(region, resolution, last)


def replace_region(conn: psycopg.Connection, table: str, rows: RegionRows) -> float:
    """Replace exactly one H3 region's rows (see ``replace_partition``)."""
    return replace_partition(conn, table, rows.table_rows(), H3_CELLS)


def replace_regions(conn: psycopg.Connection, table: str, regions: Sequence[RegionRows]) -> float:
    """Replace several H3 regions' rows in one transaction (see ``replace_partitions``)."""
    return replace_partitions(conn, table, [r.table_rows() for r in regions], H3_CELLS)


def batches_of_rows(items: Iterable, rows: Callable[[object], int], max_rows: int = ROWS_PER_TRANSACTION) -> Iterator[list]:
    """``items`` in consecutive batches of at most ``max_rows`` rows (an item larger than that alone)."""
    batch, count = [], 0
    for item in items:
        n = rows(item)
        if batch and count + n > max_rows:
            yield batch
            batch, count = [], 0
        batch.append(item)
        count += n
    if batch:
        yield batch


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = np.datetime64("2000-01-01", "D")


def _column_values(rows: TableRows, layout: TableLayout, with_geometry: bool,
                   ids: np.ndarray | None) -> list[tuple[str, str, object]]:
    """(name, kind, values) of every column in COPY order; kind: int8, float8, date, text, vector, bytes."""
    n = len(rows.keys)
    vectors = np.asarray(rows.embedding, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"partition {rows.partition:x}: {n} rows but embeddings of shape {vectors.shape}")
    per_row = ([rows.source_version.encode()] * n if isinstance(rows.source_version, str)
               else [str(v).encode() for v in rows.source_version])
    if len(per_row) != n:
        raise ValueError(f"partition {rows.partition:x}: {n} rows but {len(per_row)} source versions")
    columns: list[tuple[str, str, object]] = [
        (layout.key, "int8", np.asarray(rows.keys).astype(np.int64)),
        (layout.partition, "int8", np.full(n, int(rows.partition), dtype=np.int64)),
    ]
    for name, sql_type in layout.extra:
        values = rows.extra[name]
        if sql_type == "bigint":
            columns.append((name, "int8", np.asarray(values).astype(np.int64)))
        elif sql_type == "date":
            columns.append((name, "date", (np.asarray(values, dtype="datetime64[D]") - _PG_EPOCH).astype(np.int32)))
        else:
            columns.append((name, "text", [str(v).encode() for v in values]))
    columns += [("lon", "float8", np.asarray(rows.lon, dtype=np.float64)),
                ("lat", "float8", np.asarray(rows.lat, dtype=np.float64)),
                ("model_version", "text", [rows.model_version.encode()] * n),
                ("source_version", "text", per_row)]
    if ids is not None:
        columns.append(("vector_id", "int8", np.asarray(ids, dtype=np.int64)))
    columns.append(("embedding", "vector", vectors))
    if with_geometry:
        if rows.geometry is None:
            raise ValueError(f"partition {rows.partition:x}: the table has a geometry column but the rows have none")
        columns.append(("geom", "bytes", list(rows.geometry())))
    return columns


def copy_rows_payload(rows: TableRows, layout: TableLayout, with_geometry: bool = False,
                      ids: np.ndarray | None = None) -> bytes:
    """The binary COPY stream of a partition's rows, built with numpy in one go."""
    return _copy_stream(_column_values(rows, layout, with_geometry, ids), len(rows.keys))


def copy_partitions_payload(parts: Sequence[TableRows], layout: TableLayout, with_geometry: bool,
                            ids: np.ndarray) -> bytes:
    """One binary COPY stream of several partitions' rows (``ids``: their vector ids, in order)."""
    if not parts:
        return _COPY_HEADER + _COPY_TRAILER
    values, first = [], 0
    for part in parts:
        values.append(_column_values(part, layout, with_geometry, ids[first : first + len(part.keys)]))
        first += len(part.keys)
    return _copy_stream(_concatenate_columns(values), len(ids))


def _concatenate_columns(parts: Sequence[list[tuple[str, str, object]]]) -> list[tuple[str, str, object]]:
    """The columns of several partitions as one set of columns (arrays concatenated, lists joined)."""
    joined = []
    for i, (name, kind, values) in enumerate(parts[0]):
        every = [part[i][2] for part in parts]
        joined.append((name, kind, np.concatenate(every) if isinstance(values, np.ndarray)
                       else [v for values_ in every for v in values_]))
    return joined


def _copy_stream(columns: list[tuple[str, str, object]], n: int) -> bytes:
    """Header, records and trailer of a binary COPY of ``n`` rows of ``columns``.

    Rows whose variable-length values (texts, geometries) have the same lengths share one record layout,
    so each such group is one big-endian structured array: no per-row Python when building records."""
    variable = [i for i, (_, kind, _) in enumerate(columns) if kind in ("text", "bytes")]
    lengths = (np.stack([np.fromiter(map(len, columns[i][2]), np.int64, n) for i in variable], axis=1)
               if variable else np.zeros((n, 0), np.int64))
    parts = [_COPY_HEADER]
    if n and (lengths == lengths[:1]).all():  # the usual case; np.unique over rows sorts them all
        groups, inverse = lengths[:1], np.zeros(n, dtype=np.int64)
    else:
        groups, inverse = np.unique(lengths, axis=0, return_inverse=True)
    for g, group_lengths in enumerate(groups):
        index = np.arange(n) if len(groups) == 1 else np.nonzero(inverse.ravel() == g)[0]
        widths = dict(zip(variable, group_lengths.tolist()))
        fields: list[tuple] = [("count", ">i2")]
        for i, (name, kind, values) in enumerate(columns):
            fields.append((f"l_{name}", ">i4"))
            if kind == "int8":
                fields.append((name, ">i8"))
            elif kind == "float8":
                fields.append((name, ">f8"))
            elif kind == "date":
                fields.append((name, ">i4"))
            elif kind == "vector":
                fields += [(f"dim_{name}", ">i2"), (f"unused_{name}", ">i2"), (name, ">f4", (values.shape[1],))]
            elif widths[i]:
                fields.append((name, f"V{widths[i]}"))
        block = np.zeros(len(index), dtype=np.dtype(fields))
        block["count"] = len(columns)
        for i, (name, kind, values) in enumerate(columns):
            if kind in ("int8", "float8"):
                block[f"l_{name}"], block[name] = 8, values[index]
            elif kind == "date":
                block[f"l_{name}"], block[name] = 4, values[index]
            elif kind == "vector":
                dim = values.shape[1]
                block[f"l_{name}"], block[f"dim_{name}"], block[name] = 4 + 4 * dim, dim, values[index]
            else:
                block[f"l_{name}"] = widths[i]
                if widths[i]:
                    chosen = values if len(groups) == 1 else [values[r] for r in index.tolist()]
                    block[name] = np.frombuffer(b"".join(chosen), dtype=f"V{widths[i]}")
        parts.append(block.tobytes())
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def copy_payload(rows: RegionRows, with_geometry: bool = False) -> bytes:
    """The binary COPY stream of an H3 region's rows (with their vector ids)."""
    return copy_rows_payload(rows.table_rows(), H3_CELLS, with_geometry, vector_ids(rows.embedding))


@dataclass
class TableEmbeddings:
    """A model table's embeddings as its distinct vectors: row ``i`` (key ``keys[i]``) has the vector
    ``vectors[vector_index[i]]``; ``counts`` says how many rows share each vector."""

    keys: np.ndarray  # int64, sorted
    vector_index: np.ndarray  # int64 into vectors
    vectors: np.ndarray  # (distinct, dim) float32

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.vector_index, minlength=len(self.vectors))


def _copy_out(conn: psycopg.Connection, query: sql.Composable, record: np.dtype) -> np.ndarray:
    """A binary COPY of fixed-width rows parsed by numpy in one go (no per-row Python)."""
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT BINARY)").format(query)) as copy:
        data = b"".join(bytes(block) for block in copy)
    body = data[len(_COPY_HEADER):len(data) - len(_COPY_TRAILER)]
    return np.frombuffer(body, dtype=record)


def read_table_embeddings(conn: psycopg.Connection, found: "ModelTable") -> TableEmbeddings:
    """Every row's key and embedding, read as binary COPY: the keys with their vector ids, then the
    distinct vectors once (a 1M-row table in about a second; the embedding column is not read per row)."""
    key, dim = found.layout.key, found.dim
    table = sql.Identifier(SCHEMA, found.table)
    vector = [("l_vec", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vec", ">f4", (dim,))]
    if has_vectors_table(conn, found.table):
        rows = _copy_out(conn, sql.SQL("SELECT {}, vector_id FROM {} ORDER BY 1").format(sql.Identifier(key), table),
                         np.dtype([("count", ">i2"), ("l_key", ">i4"), ("key", ">i8"), ("l_id", ">i4"), ("id", ">i8")]))
        distinct = _copy_out(conn, sql.SQL("SELECT vector_id, embedding FROM {} ORDER BY 1").format(
            sql.Identifier(SCHEMA, vectors_table(found.table))),
            np.dtype([("count", ">i2"), ("l_id", ">i4"), ("id", ">i8"), *vector]))
        index = np.searchsorted(distinct["id"], rows["id"])
        return TableEmbeddings(rows["key"].astype(np.int64), index.astype(np.int64),
                               distinct["vec"].astype(np.float32))
    rows = _copy_out(conn, sql.SQL("SELECT {}, embedding FROM {} ORDER BY 1").format(sql.Identifier(key), table),
                     np.dtype([("count", ">i2"), ("l_key", ">i4"), ("key", ">i8"), *vector]))
    return TableEmbeddings(rows["key"].astype(np.int64), np.arange(len(rows), dtype=np.int64),
                           rows["vec"].astype(np.float32))


def has_vectors_table(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{vectors_table(table)}",)).fetchone()[0]


def table_has_geometry(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s AND column_name = 'geom'",
        (SCHEMA, table)).fetchone() is not None


def build_search_indexes(conn: psycopg.Connection, table: str, m: int = 16, ef_construction: int = 64) -> bool:
    """After a bulk load, once: the row table's search indexes (``search_index_statements``) and the cosine
    HNSW index over its distinct vectors (each a no-op if present; later loads update them in place, as
    PostgreSQL's advice for populating a database goes). Vectors no row points to any more are dropped
    first. Returns True if the HNSW index was built now."""
    conn.execute("SET maintenance_work_mem = '512MB'")
    for statement in search_index_statements(table, registered_layout(conn, table)[1], table_has_geometry(conn, table)):
        conn.execute(statement)
    vectors = vectors_table(table)
    conn.execute(sql.SQL("DELETE FROM {} AS v WHERE NOT EXISTS (SELECT 1 FROM {} AS t WHERE t.vector_id = v.vector_id)")
                 .format(sql.Identifier(SCHEMA, vectors), sql.Identifier(SCHEMA, table)))
    index = f"{vectors}_hnsw"
    exists = conn.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                          (SCHEMA, index)).fetchone()
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(SCHEMA, f"{table}_hnsw")))  # over rows: replaced
    if exists:
        return False
    conn.execute(sql.SQL(
        "CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
    ).format(sql.Identifier(index), sql.Identifier(SCHEMA, vectors), sql.Literal(m), sql.Literal(ef_construction)))
    for name in (vectors, table):
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(SCHEMA, name)))
    return True


@dataclass(frozen=True)
class ModelTable:
    table: str
    model_version: str
    dim: int
    resolution: int
    has_geometry: bool
    kind: str = "h3_cells"
    meta: dict = field(default_factory=dict)

    @property
    def layout(self) -> TableLayout:
        return LAYOUTS[self.kind]


def latest_model_table(conn: psycopg.Connection, product: str, model_version: str | None = None) -> ModelTable:
    """The table of a product's newest model version, or of the one named."""
    # A registry written before chip tables existed has no ``kind`` column: read it as cells.
    columns = ("SELECT table_name, model_version, dim, resolution, has_geometry, "
               "COALESCE(to_jsonb(m) ->> 'kind', 'h3_cells'), COALESCE(to_jsonb(m) -> 'meta', '{}'::jsonb) "
               "FROM geoembed.model_tables AS m WHERE product = %s")
    try:
        if model_version:
            row = conn.execute(columns + " AND model_version = %s", (product, model_version)).fetchone()
        else:
            row = conn.execute(columns + " ORDER BY created_at DESC LIMIT 1", (product,)).fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        raise LookupError(f"no product has been loaded into this database yet (looking for {product!r}); "
                          "materialize embedding_table") from None
    if row is None:
        which = f"model version {model_version!r} of " if model_version else ""
        raise LookupError(f"no table for {which}product {product!r} in the database; materialize embedding_table")
    return ModelTable(*row)


@dataclass
class RegisteredTable:
    """A row of the registry: one loaded model version of a product, with PostgreSQL's row estimate."""

    product: str
    model_version: str
    kind: str
    dim: int
    resolution: int
    table: str
    rows: int
    created_at: str


def registered_tables(conn: psycopg.Connection) -> list[RegisteredTable]:
    """Every product's loaded model versions, newest first within a product (none before any load)."""
    try:
        rows = conn.execute(
            "SELECT m.product, m.model_version, COALESCE(to_jsonb(m) ->> 'kind', 'h3_cells'), m.dim, m.resolution, "
            "m.table_name, GREATEST(c.reltuples, 0)::bigint, m.created_at::text FROM geoembed.model_tables AS m "
            "LEFT JOIN pg_class AS c ON c.relname = m.table_name AND c.relnamespace = 'geoembed'::regnamespace "
            "ORDER BY m.product, m.created_at DESC").fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return []
    return [RegisteredTable(*row) for row in rows]


def count_rows(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, table))).fetchone()[0]


TIE_TOLERANCE = 1e-6


def recall(found_distances: list[float], exact_distances: list[float], k: int) -> float:
    """Recall@k that is fair to ties: a found neighbour counts if it is no farther than the exact k-th.

    Many cells share one embedding (every all-water window, say); any of them is a right answer."""
    if not exact_distances:
        return 1.0
    kth = exact_distances[min(k, len(exact_distances)) - 1]
    hits = sum(d <= kth + TIE_TOLERANCE for d in found_distances[:k])
    return min(hits, len(exact_distances)) / min(k, len(exact_distances))
