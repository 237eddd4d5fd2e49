""""Places like this one": k nearest cells by cosine distance, optionally inside an area.

An area (bbox or GeoJSON polygon) becomes the H3 cells it covers at the product's resolution,
compacted, and each compacted cell becomes one range of ids on the table's primary key (all
descendants of an H3 cell at a fixed resolution are contiguous integers). Small areas are searched
exactly (filter first, then sort); large ones through the HNSW index with iterative scans, falling
back to the exact plan if the index returns fewer than k rows. Either way k rows come back whenever
k exist in the area.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h3
import h3.api.basic_int as h3i
import mercantile
import numpy as np
import psycopg
from psycopg.types.multirange import Multirange
from psycopg.types.range import Range
from psycopg import sql

from geoembed.core.errors import InputError
from geoembed.core.geometry import GeometryInputError, geojson_polygons, read_geojson
from geoembed.core.grids.mgrs import ChipRef
from geoembed.core.grids.quadkey import QuadkeyError, QuadkeyRef, place_key, quadkey_footprints
from geoembed.core.sinks.pgvector import (
    SCHEMA, ModelTable, latest_model_table, recall, vector_ids, vectors_table,
)

EXACT_SEARCH_MAX_ROWS = 50_000  # areas with at most this many rows are searched exactly


class SearchInputError(InputError):
    """A query cell, point or area is invalid."""


@dataclass(frozen=True)
class Area:
    """An area as inclusive H3 id ranges at the product resolution (for any server) and as a GeoJSON
    MultiPolygon in EPSG:4326 (for PostGIS, whose GiST index answers ST_Intersects)."""

    lo: np.ndarray
    hi: np.ndarray
    geometry: dict
    description: str


@dataclass
class Match:
    h3: int
    distance: float
    lon: float
    lat: float

    @property
    def cell(self) -> str:
        return h3.int_to_str(self.h3)


@dataclass
class SearchResult:
    query_cell: int
    model_version: str
    table: str
    plan: str
    matches: list[Match] = field(default_factory=list)


def parse_cell(value: str) -> int:
    text = value.strip().lower()
    try:
        cell = int(text) if text.isdigit() else h3.str_to_int(text)
        valid = h3i.is_valid_cell(cell)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise SearchInputError(f"cell {value!r} is not a valid H3 cell id (hex like '8428309ffffffff' or its integer)")
    return cell


def cell_at(lon: float, lat: float, resolution: int) -> int:
    if not (-180.0 <= lon <= 180.0) or not (-90.0 <= lat <= 90.0):
        raise SearchInputError(f"lon/lat ({lon}, {lat}) is out of range: lon in [-180, 180], lat in [-90, 90]")
    return h3i.latlng_to_cell(lat, lon, resolution)


def descendant_range(cell: int, resolution: int) -> tuple[int, int]:
    """Inclusive integer range holding exactly the descendants of ``cell`` at ``resolution``
    (among valid cells of that resolution): the digits below the cell's own go from 0 to 6."""
    res = h3i.get_resolution(cell)
    lo = (cell & ~(0xF << 52)) | (resolution << 52)
    hi = lo
    for digit in range(res + 1, resolution + 1):
        shift = (15 - digit) * 3
        lo &= ~(7 << shift)
        hi = (hi & ~(7 << shift)) | (6 << shift)
    return lo, hi


def _area_from_shapes(shapes: list, polygons: list, resolution: int, description: str) -> Area:
    cells: set[str] = set()
    for shape in shapes:
        found = h3.h3shape_to_cells_experimental(shape, resolution, contain="center")
        if not found:  # an area smaller than a cell: take the cells it touches
            found = h3.h3shape_to_cells_experimental(shape, resolution, contain="overlap")
        cells.update(found)
    if not cells:
        raise SearchInputError(f"area {description} covers no H3 cell at resolution {resolution}")
    compact = [h3.str_to_int(c) for c in h3.compact_cells(list(cells))]
    ranges = sorted(descendant_range(c, resolution) for c in compact)
    geometry = {"type": "MultiPolygon", "coordinates": polygons}
    return Area(np.array([r[0] for r in ranges], dtype=np.int64), np.array([r[1] for r in ranges], dtype=np.int64),
                geometry, description)


def bbox_area(bbox: str | list[float], resolution: int) -> Area:
    """'west,south,east,north' in degrees; west > east crosses the antimeridian."""
    try:
        values = [float(v) for v in (bbox.split(",") if isinstance(bbox, str) else bbox)]
    except ValueError:
        raise SearchInputError(f"bbox {bbox!r} must be four numbers: west,south,east,north") from None
    if len(values) != 4:
        raise SearchInputError(f"bbox {bbox!r} must be four numbers: west,south,east,north")
    west, south, east, north = values
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90) or west == east:
        raise SearchInputError(
            f"bbox {bbox!r} is invalid: need -180<=west,east<=180, west!=east, -90<=south<north<=90"
        )
    spans = [(west, east)] if west < east else [(west, 180.0), (-180.0, east)]
    shapes = []
    polygons = [[[[w, south], [e, south], [e, north], [w, north], [w, south]]] for w, e in spans]
    for w, e in spans:
        edges = np.linspace(w, e, int(np.ceil((e - w) / 90.0)) + 1)  # H3 polygons must span < 180 degrees
        for a, b in zip(edges[:-1], edges[1:]):
            shapes.append(h3.LatLngPoly([(south, a), (south, b), (north, b), (north, a)]))
    return _area_from_shapes(shapes, polygons, resolution, f"bbox {values}")


def geojson_area(geojson: str | dict, resolution: int) -> Area:
    """A GeoJSON Polygon/MultiPolygon, Feature or FeatureCollection: inline text, a dict or a file path."""
    try:
        obj, source = read_geojson(geojson)
        geometries = geojson_polygons(obj, source)
    except GeometryInputError as exc:
        raise SearchInputError(str(exc)) from None
    shapes = []
    polygons = [p for g in geometries for p in ([g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"])]
    for geometry in geometries:
        try:
            shapes.append(h3.geo_to_h3shape(geometry))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise SearchInputError(f"{source}: invalid {geometry.get('type')} geometry: {exc}") from None
    return _area_from_shapes(shapes, polygons, resolution, source)


def area_filter(area: Area | None, postgis: bool) -> tuple[sql.Composable, sql.Composable, tuple]:
    """(join, condition, parameters) restricting ``t`` to the area."""
    if area is None:
        return sql.SQL(""), sql.SQL("TRUE"), ()
    if postgis:
        return (sql.SQL(""), sql.SQL("ST_Intersects(t.geom, ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326))"),
                (json.dumps(area.geometry),))
    return (sql.SQL(" JOIN unnest(%s::int8[], %s::int8[]) AS area(lo, hi) ON t.h3 BETWEEN area.lo AND area.hi"),
            sql.SQL("TRUE"), (area.lo.tolist(), area.hi.tolist()))


def row_filter(area: Area | None, postgis: bool) -> tuple[sql.Composable, sql.Composable, tuple]:
    """Like ``area_filter``, for testing rows one at a time (the index walk): H3 id ranges as one
    multirange, which a row checks by binary search, where a join would scan every range per row."""
    if area is None or postgis:
        return area_filter(area, postgis)
    ranges = Multirange([Range(int(lo), int(hi), "[]") for lo, hi in zip(area.lo, area.hi)])
    return sql.SQL(""), sql.SQL("t.h3 <@ %s::int8multirange"), (ranges,)


def _neighbours(
    conn: psycopg.Connection, found: ModelTable, query, columns: list[str], exclude: str, excluded: int, k: int,
    area: Area | None, ef_search: int,
) -> tuple[list[tuple], str]:
    """The k rows nearest ``query`` (their ``columns``, the distance second), leaving out rows whose
    ``exclude`` column equals ``excluded``, and the plan used.

    Small areas are searched exactly (filter first). Otherwise the HNSW index over the table's distinct
    vectors is walked nearest first, each vector bringing its rows (a group of identical rows is one point
    of the graph, not thousands that crowd out the rest), until k rows are found; if the walk gives up
    first (``MAX_VECTORS``, or sooner in an area: ``_walk_budget``), the search is exact."""
    ident = sql.Identifier(SCHEMA, found.table)
    postgis = found.has_geometry
    join, condition, area_params = area_filter(area, postgis)
    source = sql.SQL("FROM {} AS t").format(ident) + join
    key, *rest = [sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns]
    skip = sql.SQL("t.{} <> %s").format(sql.Identifier(exclude))
    # Statements are never prepared: a cached generic plan would ignore the per-query settings below.
    with conn.transaction():
        count = 0
        if area is not None:
            count = conn.execute(sql.SQL("SELECT count(*) ") + source + sql.SQL(" WHERE ") + condition,
                                 area_params, prepare=False).fetchone()[0]
        exact = area is not None and count <= EXACT_SEARCH_MAX_ROWS
        if not exact:
            try:
                rows = _nearest_through_vectors(conn, found, query, key, rest, *row_filter(area, postgis), skip,
                                                excluded, k, ef_search, _walk_budget(conn, found, k, area, count),
                                                own_group=area is None)
            except psycopg.errors.UndefinedTable:  # the transaction is rolled back as this leaves it
                raise LookupError(f"table {SCHEMA}.{found.table} was loaded before distinct-vector indexing: "
                                  "materialize its index asset (embedding_index, chip_index) once to bring it up "
                                  "to date") from None
            plan = "hnsw over distinct vectors" + ("" if area is None else f" ({count:,} rows in area)")
            if len(rows) >= k or (area is None and len(rows) >= found_rows_below(conn, found, k, skip, excluded)):
                return rows, plan
            plan += ", exact fallback"  # the walk gave up (max_scan_tuples) before k rows
        else:
            plan = f"exact (filter first{' by PostGIS' if postgis else ''}, {count:,} rows in area)" if area is not None \
                else "exact"
        projection = sql.SQL(", ").join([key, sql.SQL("t.embedding <=> %s AS distance"), *rest])
        statement = (sql.SQL("WITH candidates AS MATERIALIZED (SELECT t.* ") + source + sql.SQL(" WHERE ")
                     + condition + sql.SQL(") SELECT ") + projection
                     + sql.SQL(" FROM candidates AS t WHERE ") + skip
                     + sql.SQL(" ORDER BY t.embedding <=> %s, 1 LIMIT %s"))
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(statement, (*area_params, query, excluded, query, k), prepare=False).fetchall()
    return rows, plan


# The index walk gives up after this many vectors (hnsw.max_scan_tuples); the search is then exact.
MAX_VECTORS = 200_000
# In an area the walk stops sooner: past what finding k rows in an area of that share of the table
# takes (many times over), the area's rows are not near the query and filtering first is cheaper.
MIN_AREA_WALK = 2_000


def _walk_budget(conn: psycopg.Connection, found: ModelTable, k: int, area: Area | None, rows_in_area: int) -> int:
    if area is None:
        return MAX_VECTORS
    total = conn.execute("SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE n.nspname = %s AND c.relname = %s", (SCHEMA, found.table), prepare=False).fetchone()[0]
    share = max(rows_in_area, 1) / max(total, rows_in_area, 1)  # reltuples is -1 before the first ANALYZE
    return int(min(MAX_VECTORS, max(MIN_AREA_WALK, 20 * k / share)))


def found_rows_below(conn, found: ModelTable, k: int, skip, excluded: int) -> int:
    """How many rows (up to k) the whole table holds besides the excluded ones: fewer than k is all."""
    return conn.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} AS t WHERE ").format(
        sql.Identifier(SCHEMA, found.table)) + skip + sql.SQL(" LIMIT %s) AS c"), (excluded, k),
        prepare=False).fetchone()[0]


def _nearest_through_vectors(conn, found: ModelTable, query, key, rest, join, condition, area_params, skip,
                             excluded: int, k: int, ef_search: int, walk_budget: int, own_group: bool = True
                             ) -> list[tuple]:
    """The k nearest rows, walking the distinct vectors in index order (HNSW, iterative scan) and taking
    at most k rows of each (in the area, by key, through the (vector_id, key) index) until k rows are
    found: PostgreSQL stops the walk there, however large the group of identical rows or the area.
    ``own_group``: also take the rows of the query's own vector (by its id), which the walk can miss. Not
    in an area: a large group with few rows there would be read row by row (p95 0.35 s at 10 % of res 5)."""
    vectors = sql.Identifier(SCHEMA, vectors_table(found.table))
    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}; SET LOCAL hnsw.iterative_scan = relaxed_order; "
                         "SET LOCAL hnsw.max_scan_tuples = {}").format(
        sql.Literal(min(1000, max(ef_search, 2 * k))), sql.Literal(walk_budget)))
    projection = sql.SQL(", ").join([key, sql.SQL("v.embedding <=> %s AS distance"), *rest])
    statement = (sql.SQL("SELECT ") + projection + sql.SQL(" FROM {} AS v CROSS JOIN LATERAL (SELECT t.* FROM {} AS t")
                 .format(vectors, sql.Identifier(SCHEMA, found.table)) + join
                 + sql.SQL(" WHERE t.vector_id = v.vector_id AND ") + condition + sql.SQL(" AND ") + skip
                 + sql.SQL(" ORDER BY ") + key + sql.SQL(" LIMIT %s) AS t ORDER BY v.embedding <=> %s LIMIT %s"))
    if own_group is False:
        rows = conn.execute(statement, (query, *area_params, excluded, k, query, k), prepare=False).fetchall()
        return sorted(rows, key=lambda r: (r[1], r[0]))  # relaxed_order: the k found are sorted exactly
    # Beside the walk, the query's own vector looked up by its id: a large group of identical rows (every
    # all-water window) is one point of the graph, often far from all others, and the walk can miss it; its
    # rows are the nearest there are. Both in one statement: one round trip.
    own = (sql.SQL("SELECT ") + sql.SQL(", ").join([key, sql.SQL("t.embedding <=> %s AS distance"), *rest])
           + sql.SQL(" FROM {} AS t").format(sql.Identifier(SCHEMA, found.table)) + join
           + sql.SQL(" WHERE ") + condition + sql.SQL(" AND t.vector_id = %s AND ") + skip
           + sql.SQL(" ORDER BY ") + key + sql.SQL(" LIMIT %s"))
    vector = query.to_numpy() if hasattr(query, "to_numpy") else query
    own_id = int(vector_ids(np.asarray(vector, dtype=np.float32)[None])[0])
    rows = conn.execute(sql.SQL("(") + statement + sql.SQL(") UNION ALL (") + own + sql.SQL(")"),
                        (query, *area_params, excluded, k, query, k, query, *area_params, own_id, excluded, k),
                        prepare=False).fetchall()
    # relaxed_order may return vectors slightly out of order: the k found are sorted exactly.
    unique = {row[0]: row for row in rows}
    return sorted(unique.values(), key=lambda r: (r[1], r[0]))[:k]


def _check_k(k: int) -> None:
    if not 1 <= k <= 10_000:
        raise SearchInputError(f"k must be between 1 and 10000, got {k}")


def similar(
    conn: psycopg.Connection,
    product: str,
    cell: int,
    k: int = 10,
    area: Area | None = None,
    model_version: str | None = None,
    ef_search: int = 100,
) -> SearchResult:
    """The k cells most similar to ``cell`` (itself excluded), nearest first."""
    _check_k(k)
    found = latest_model_table(conn, product, model_version)
    ident = sql.Identifier(SCHEMA, found.table)
    row = conn.execute(sql.SQL("SELECT embedding FROM {} WHERE h3 = %s").format(ident), (cell,), prepare=False).fetchone()
    if row is None:
        raise SearchInputError(
            f"cell {h3.int_to_str(cell)} has no embedding in {product!r} (model {found.model_version}): outside the "
            "product, not yet loaded, or without enough valid data"
        )
    rows, plan = _neighbours(conn, found, row[0], ["h3", "lon", "lat"], "h3", cell, k, area, ef_search)
    matches = [Match(int(h), float(d), float(lon), float(lat)) for h, d, lon, lat in rows]
    return SearchResult(cell, found.model_version, f"{SCHEMA}.{found.table}", plan, matches)


@dataclass
class ChipMatch:
    chip: int
    distance: float
    lon: float
    lat: float
    tile: str
    date: str
    chip_id: str
    grid: str = "mgrs"  # or "quadkey": the chip id is its quadkey

    @property
    def ref(self) -> str:
        return f"{self.chip_id}/{self.date}" if self.grid == "quadkey" else f"{self.tile}/{self.date}/{self.chip_id}"


@dataclass
class ChipSearchResult:
    query: str
    model_version: str
    table: str
    plan: str
    matches: list[ChipMatch] = field(default_factory=list)


def chip_places_at(lon: float, lat: float, chip_size: int) -> list[int]:
    """The places (tile, row, col) of the chips of every published tile that hold a point."""
    from geoembed.core.grids.mgrs import place_key, published_grid, tile_footprint
    from pyproj import Transformer

    if not (-180.0 <= lon <= 180.0) or not (-90.0 <= lat <= 90.0):
        raise SearchInputError(f"lon/lat ({lon}, {lat}) is out of range: lon in [-180, 180], lat in [-90, 90]")
    places = []
    for tile_id in published_grid().tiles_containing(lon, lat):
        tile = tile_footprint(tile_id)
        x, y = Transformer.from_crs("EPSG:4326", tile.crs, always_xy=True).transform(lon, lat)
        col, row = int((x - tile.bounds[0]) // (chip_size * 10)), int((tile.bounds[3] - y) // (chip_size * 10))
        if row >= 0 and col >= 0:
            places.append(place_key(tile_id, row, col))
    return places


def parse_chip(text: str) -> ChipRef | QuadkeyRef:
    """A chip as people name it: an MGRS chip ('33UUU/2017-02-16/31_12') or a quadkey chip
    ('1202102233323' or '1202102233323/2017-02-16')."""
    if str(text).strip().split("/")[0].isdigit():
        try:
            return QuadkeyRef.parse(text)
        except QuadkeyError as exc:
            raise SearchInputError(str(exc)) from None
    return ChipRef.parse(text)


def chip_grid(found: ModelTable) -> str:
    return str(found.meta.get("grid", "mgrs"))


def similar_chips(
    conn: psycopg.Connection,
    product: str,
    chip: ChipRef | QuadkeyRef | None = None,
    lonlat: tuple[float, float] | None = None,
    k: int = 10,
    area: Area | None = None,
    model_version: str | None = None,
    ef_search: int = 100,
) -> ChipSearchResult:
    """The k chips most similar to a chip (by reference, or the one at a lon/lat; without a date: its
    newest), nearest first. Other dates of the same ground are left out: they would trivially match."""
    _check_k(k)
    found = latest_model_table(conn, product, model_version)
    if found.kind != "chips":
        raise SearchInputError(f"product {product!r} holds {found.kind.replace('_', ' ')}, not chips; search it by cell")
    ident = sql.Identifier(SCHEMA, found.table)
    grid = chip_grid(found)
    if chip is not None:
        if (grid == "quadkey") != isinstance(chip, QuadkeyRef):
            raise SearchInputError(f"product {product!r} names its chips by "
                                   f"{'quadkey' if grid == 'quadkey' else 'TILE/YYYY-MM-DD/ROW_COL'}, not {chip}")
        places, described = [chip.place], str(chip)
    elif lonlat is not None:
        if grid == "quadkey":
            _ = cell_at(*lonlat, resolution=0)  # range check
            places = [place_key(mercantile.tile(lonlat[0], lonlat[1], int(found.meta["zoom"])))]
        else:
            places = chip_places_at(*lonlat, int(found.meta.get("chip_size", 256)))
        described = f"lon/lat {tuple(lonlat)}"
    else:
        raise SearchInputError("give a chip or a lon/lat")
    when = sql.SQL(" AND acquired = %s") if chip is not None and chip.date else sql.SQL("")
    params = (places, *([chip.date] if chip is not None and chip.date else []))
    row = conn.execute(sql.SQL("SELECT chip, place, embedding, tile, acquired, chip_id FROM {} WHERE place = ANY(%s)")
                       .format(ident) + when + sql.SQL(" ORDER BY acquired DESC LIMIT 1"), params,
                       prepare=False).fetchone()
    if row is None:
        raise SearchInputError(f"chip {described} has no embedding in {product!r} (model {found.model_version}): "
                               "outside the product's tiles, not loaded yet, or without data")
    key, place, query, tile, acquired, chip_id = row
    rows, plan = _neighbours(conn, found, query, ["chip", "lon", "lat", "place", "tile", "acquired", "chip_id"],
                             "place", place, k, area, ef_search)
    matches = [ChipMatch(int(c), float(d), float(lon), float(lat), t, str(a), cid, grid)
               for c, d, lon, lat, _, t, a, cid in rows]
    query_ref = ChipMatch(int(key), 0.0, 0.0, 0.0, tile, str(acquired), chip_id, grid).ref
    return ChipSearchResult(query_ref, found.model_version, f"{SCHEMA}.{found.table}", plan, matches)


def to_geojson(result: SearchResult) -> dict:
    """The matches as a FeatureCollection of hexagons (lon/lat, EPSG:4326), nearest first."""
    features = []
    for rank, match in enumerate(result.matches, start=1):
        ring = [[lon, lat] for lat, lon in h3i.cell_to_boundary(match.h3)]
        ring.append(ring[0])
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"rank": rank, "h3": match.cell, "distance": match.distance, "lon": match.lon,
                           "lat": match.lat},
        })
    return {"type": "FeatureCollection", "features": features,
            "properties": {"query": h3.int_to_str(result.query_cell), "model_version": result.model_version}}


def chips_to_geojson(result: ChipSearchResult, chip_size: int) -> dict:
    """The matched chips as a FeatureCollection of their footprints (lon/lat, OGC:CRS84), nearest first."""
    from shapely.geometry import mapping

    from geoembed.core.grids.mgrs import chip_footprints

    keys = np.array([m.chip for m in result.matches], dtype=np.int64)
    quadkeys = bool(result.matches) and result.matches[0].grid == "quadkey"
    footprints = quadkey_footprints(keys) if quadkeys else chip_footprints(keys, chip_size)
    features = [{"type": "Feature", "geometry": mapping(footprint),
                 "properties": {"rank": rank, "chip": match.ref, "tile": match.tile, "date": match.date,
                                "chip_id": match.chip_id, "distance": match.distance, "lon": match.lon,
                                "lat": match.lat}}
                for rank, (match, footprint) in enumerate(zip(result.matches, footprints), start=1)]
    return {"type": "FeatureCollection", "features": features,
            "properties": {"query": result.query, "model_version": result.model_version}}


@dataclass
class RecallReport:
    """Recall@k of the search users get against exact search, on queries drawn over distinct vectors
    (so that a large group of identical vectors, 43 % of the default product's cells, cannot stand for
    most queries and hide the misses elsewhere)."""

    k: int
    overall: float  # queries drawn uniformly over distinct vectors
    outside_identical_groups: float  # those of them held by a single row
    queries: int
    queries_outside: int
    distinct_vectors: int
    rows: int

    @property
    def worst(self) -> float:
        return min(self.overall, self.outside_identical_groups)

    def to_metadata(self) -> dict:
        return {"recall_at_k": round(self.overall, 4), "recall_outside_identical_groups":
                round(self.outside_identical_groups, 4), "k": self.k, "queries": self.queries,
                "queries_outside_identical_groups": self.queries_outside, "distinct_vectors": self.distinct_vectors,
                "rows": self.rows}


def recall_report(conn: psycopg.Connection, found: ModelTable, n_queries: int = 100, k: int = 10,
                  seed: int = 0) -> RecallReport:
    """Recall@k (ties counted fairly) of ``similar``'s index path against an exact scan, each query a row
    holding a distinct vector drawn at random (the same draw every time for the same table)."""
    table = sql.Identifier(SCHEMA, found.table)
    layout = found.layout
    exclude = "place" if layout.kind == "chips" else layout.key
    conn.execute("SELECT setseed(%s)", (((seed % 1000) / 1000.0),))
    drawn = conn.execute(sql.SQL(
        "SELECT q.key, q.excluded, q.embedding, g.n FROM (SELECT vector_id, count(*) AS n FROM {t} GROUP BY vector_id "
        "ORDER BY hashint8(vector_id + %s), vector_id LIMIT %s) AS g CROSS JOIN LATERAL (SELECT {key} AS key, "
        "{exclude} AS excluded, embedding FROM {t} WHERE vector_id = g.vector_id ORDER BY {key} LIMIT 1) AS q").format(
        t=table, key=sql.Identifier(layout.key), exclude=sql.Identifier(exclude)), (seed, n_queries),
        prepare=False).fetchall()
    distinct = conn.execute(sql.SQL("SELECT count(DISTINCT vector_id), count(*) FROM {}").format(table)).fetchone()
    overall, outside = [], []
    for key, excluded, vector, copies in drawn:
        with conn.transaction():
            conn.execute("SET LOCAL enable_indexscan = off")
            truth = [float(r[0]) for r in conn.execute(sql.SQL(
                "SELECT embedding <=> %s FROM {} WHERE {} <> %s ORDER BY embedding <=> %s LIMIT %s").format(
                table, sql.Identifier(exclude)), (vector, excluded, vector, k), prepare=False).fetchall()]
        rows, _ = _neighbours(conn, found, vector, [layout.key], exclude, excluded, k, None, 100)
        score = recall([float(r[1]) for r in rows], truth, k)
        overall.append(score)
        if copies == 1:
            outside.append(score)
    return RecallReport(k, float(np.mean(overall)) if overall else 0.0, float(np.mean(outside)) if outside else 1.0,
                        len(overall), len(outside), int(distinct[0]), int(distinct[1]))


@dataclass(frozen=True)
class SimilarQuery:
    """"Places like this one" as a user asks it (CLI, HTTP API): exactly one of a cell, a chip or a
    point, optionally inside an area (a bbox or a GeoJSON polygon)."""

    product: str
    cell: str | None = None
    chip: str | None = None
    lonlat: tuple[float, float] | None = None
    k: int = 10
    bbox: str | list[float] | None = None
    geojson: str | dict | None = None
    model_version: str | None = None

    def checked(self) -> "SimilarQuery":
        """Errors a query shows before any database is touched (SearchInputError naming the input)."""
        if sum(v is not None for v in (self.cell, self.lonlat, self.chip)) != 1:
            raise SearchInputError("give exactly one of a cell, a chip or a lon/lat")
        if self.bbox is not None and self.geojson is not None:
            raise SearchInputError("give at most one of a bbox or a GeoJSON area")
        _check_k(self.k)
        if self.cell is not None:
            parse_cell(self.cell)
        if self.chip is not None:
            parse_chip(self.chip)
        if self.lonlat is not None:
            cell_at(*self.lonlat, resolution=0)  # range check
        return self


def find_similar(conn: psycopg.Connection, query: SimilarQuery) -> tuple[SearchResult | ChipSearchResult, ModelTable]:
    """Answer a query on the product's newest (or named) model table: cells for an H3 product, chips for
    an imagery product; and the table it used."""
    query.checked()
    found = latest_model_table(conn, query.product, query.model_version)
    area = None
    if query.bbox is not None:
        area = bbox_area(query.bbox, found.resolution)
    elif query.geojson is not None:
        area = geojson_area(query.geojson, found.resolution)
    if found.kind == "chips":
        if query.cell is not None:
            raise SearchInputError(f"product {query.product!r} holds chips: give a chip or a lon/lat")
        chip = parse_chip(query.chip) if query.chip is not None else None
        return similar_chips(conn, query.product, chip, query.lonlat, query.k, area, query.model_version), found
    if query.chip is not None:
        raise SearchInputError(f"product {query.product!r} holds H3 cells: give a cell or a lon/lat")
    cell = parse_cell(query.cell) if query.cell is not None else cell_at(*query.lonlat, found.resolution)
    return similar(conn, query.product, cell, query.k, area, query.model_version), found


def result_geojson(result: SearchResult | ChipSearchResult, found: ModelTable) -> dict:
    """A result as GeoJSON: hexagons for cells, footprints for chips."""
    if isinstance(result, ChipSearchResult):
        return chips_to_geojson(result, int(found.meta.get("chip_size", 256)))
    return to_geojson(result)
