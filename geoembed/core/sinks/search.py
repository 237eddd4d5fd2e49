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
from pathlib import Path

import h3
import h3.api.basic_int as h3i
import numpy as np
import psycopg
from psycopg import sql

from geoembed.core.errors import InputError
from geoembed.core.sinks.pgvector import SCHEMA, latest_model_table

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
    source = "GeoJSON"
    if isinstance(geojson, str):
        text = geojson
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.exists():
                raise SearchInputError(f"GeoJSON {text!r} is neither a JSON object nor an existing file")
            source, text = f"GeoJSON file {text!r}", path.read_text()
        try:
            geojson = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SearchInputError(f"{source} is not valid JSON: {exc}") from None
    geometries = _geometries(geojson, source)
    shapes = []
    polygons = [p for g in geometries for p in ([g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"])]
    for geometry in geometries:
        try:
            shapes.append(h3.geo_to_h3shape(geometry))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise SearchInputError(f"{source}: invalid {geometry.get('type')} geometry: {exc}") from None
    return _area_from_shapes(shapes, polygons, resolution, source)


def _geometries(obj, source: str) -> list[dict]:
    if not isinstance(obj, dict) or "type" not in obj:
        raise SearchInputError(f"{source} must be a GeoJSON object with a 'type'")
    kind = obj["type"]
    if kind == "FeatureCollection":
        return [g for f in obj.get("features", []) for g in _geometries(f, source)]
    if kind == "Feature":
        return _geometries(obj.get("geometry") or {}, source)
    if kind in ("Polygon", "MultiPolygon"):
        return [obj]
    raise SearchInputError(f"{source}: geometry type {kind!r} is not an area (use Polygon or MultiPolygon)")


def area_filter(area: Area | None, postgis: bool) -> tuple[sql.Composable, sql.Composable, tuple]:
    """(join, condition, parameters) restricting ``t`` to the area."""
    if area is None:
        return sql.SQL(""), sql.SQL("TRUE"), ()
    if postgis:
        return (sql.SQL(""), sql.SQL("ST_Intersects(t.geom, ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326))"),
                (json.dumps(area.geometry),))
    return (sql.SQL(" JOIN unnest(%s::int8[], %s::int8[]) AS area(lo, hi) ON t.h3 BETWEEN area.lo AND area.hi"),
            sql.SQL("TRUE"), (area.lo.tolist(), area.hi.tolist()))


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
    if not 1 <= k <= 10_000:
        raise SearchInputError(f"k must be between 1 and 10000, got {k}")
    found = latest_model_table(conn, product, model_version)
    table, version = found.table, found.model_version
    ident = sql.Identifier(SCHEMA, table)
    row = conn.execute(sql.SQL("SELECT embedding FROM {} WHERE h3 = %s").format(ident), (cell,), prepare=False).fetchone()
    if row is None:
        raise SearchInputError(
            f"cell {h3.int_to_str(cell)} has no embedding in {product!r} (model {version}): outside the product, "
            "not yet loaded, or without enough valid data"
        )
    query = row[0]
    postgis = found.has_geometry
    join, condition, area_params = area_filter(area, postgis)
    source = sql.SQL("FROM {} AS t").format(ident) + join
    select = sql.SQL("SELECT t.h3, t.embedding <=> %s AS distance, t.lon, t.lat ") + source
    # Statements are never prepared: a cached generic plan would ignore the per-query settings below.
    with conn.transaction():
        count = 0
        if area is not None:
            count = conn.execute(sql.SQL("SELECT count(*) ") + source + sql.SQL(" WHERE ") + condition,
                                 area_params, prepare=False).fetchone()[0]
        if area is not None and count <= EXACT_SEARCH_MAX_ROWS:
            plan = f"exact (filter first{' by PostGIS' if postgis else ''}, {count:,} rows in area)"
            statement = (sql.SQL("WITH candidates AS MATERIALIZED (SELECT t.* ") + source + sql.SQL(" WHERE ")
                         + condition + sql.SQL(") SELECT t.h3, t.embedding <=> %s AS distance, t.lon, t.lat "
                                               "FROM candidates AS t WHERE t.h3 <> %s "
                                               "ORDER BY t.embedding <=> %s LIMIT %s"))
            rows = conn.execute(statement, (*area_params, query, cell, query, k), prepare=False).fetchall()
        else:
            plan = "hnsw" if area is None else f"hnsw iterative scan ({count:,} rows in area)"
            conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(ef_search, 2 * k + 2))))
            conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            conn.execute("SET LOCAL hnsw.max_scan_tuples = 200000")
            # relaxed_order may return rows slightly out of order: sort the k found exactly.
            statement = (sql.SQL("SELECT * FROM (") + select + sql.SQL(" WHERE ") + condition
                         + sql.SQL(" ORDER BY t.embedding <=> %s LIMIT %s) AS found ORDER BY distance"))
            rows = conn.execute(statement, (query, *area_params, query, k + 1), prepare=False).fetchall()
            rows = [r for r in rows if r[0] != cell][:k]
            if area is not None and len(rows) < min(k, count - 1):
                plan += ", exact fallback"
                conn.execute("SET LOCAL enable_indexscan = off")
                statement = select + sql.SQL(" WHERE ") + condition + sql.SQL(
                    " AND t.h3 <> %s ORDER BY t.embedding <=> %s LIMIT %s")
                rows = conn.execute(statement, (query, *area_params, cell, query, k), prepare=False).fetchall()
    matches = [Match(int(h), float(d), float(lon), float(lat)) for h, d, lon, lat in rows]
    return SearchResult(cell, version, f"{SCHEMA}.{table}", plan, matches)


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
