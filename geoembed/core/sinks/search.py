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
import numpy as np
import psycopg
from psycopg import sql

from geoembed.core.errors import InputError
from geoembed.core.geometry import GeometryInputError, geojson_polygons, read_geojson
from geoembed.core.grids.mgrs import ChipRef
from geoembed.core.sinks.pgvector import SCHEMA, ModelTable, latest_model_table

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


def _neighbours(
    conn: psycopg.Connection, found: ModelTable, query, columns: list[str], exclude: str, excluded: int, k: int,
    area: Area | None, ef_search: int, overfetch: int = 1,
) -> tuple[list[tuple], str]:
    """The k rows nearest ``query`` (their ``columns``, the distance second), leaving out rows whose
    ``exclude`` column equals ``excluded``, and the plan used. Small areas are searched exactly; large
    ones and the whole table through HNSW (``overfetch``: how many excluded rows the index may return)."""
    ident = sql.Identifier(SCHEMA, found.table)
    postgis = found.has_geometry
    join, condition, area_params = area_filter(area, postgis)
    source = sql.SQL("FROM {} AS t").format(ident) + join
    key, *rest = [sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns]
    projection = sql.SQL(", ").join([key, sql.SQL("t.embedding <=> %s AS distance"), *rest])
    select = sql.SQL("SELECT ") + projection + sql.SQL(" ") + source
    skip = sql.SQL("t.{} <> %s").format(sql.Identifier(exclude))
    j = columns.index(exclude)
    position = j + 1 if j else 0  # rows are (key, distance, the other columns)
    # Statements are never prepared: a cached generic plan would ignore the per-query settings below.
    with conn.transaction():
        count = 0
        if area is not None:
            count = conn.execute(sql.SQL("SELECT count(*) ") + source + sql.SQL(" WHERE ") + condition,
                                 area_params, prepare=False).fetchone()[0]
        if area is not None and count <= EXACT_SEARCH_MAX_ROWS:
            plan = f"exact (filter first{' by PostGIS' if postgis else ''}, {count:,} rows in area)"
            statement = (sql.SQL("WITH candidates AS MATERIALIZED (SELECT t.* ") + source + sql.SQL(" WHERE ")
                         + condition + sql.SQL(") SELECT ") + projection
                         + sql.SQL(" FROM candidates AS t WHERE ") + skip
                         + sql.SQL(" ORDER BY t.embedding <=> %s LIMIT %s"))
            rows = conn.execute(statement, (*area_params, query, excluded, query, k), prepare=False).fetchall()
            return rows, plan
        plan = "hnsw" if area is None else f"hnsw iterative scan ({count:,} rows in area)"
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(ef_search, 2 * (k + overfetch)))))
        conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        conn.execute("SET LOCAL hnsw.max_scan_tuples = 200000")
        # relaxed_order may return rows slightly out of order: sort the ones found exactly.
        statement = (sql.SQL("SELECT * FROM (") + select + sql.SQL(" WHERE ") + condition
                     + sql.SQL(" ORDER BY t.embedding <=> %s LIMIT %s) AS found ORDER BY distance"))
        rows = conn.execute(statement, (query, *area_params, query, k + overfetch), prepare=False).fetchall()
        rows = [r for r in rows if r[position] != excluded][:k]
        short = len(rows) < k and (overfetch > 1 or area is not None)
        if short and (area is None or len(rows) < count - overfetch):
            plan += ", exact fallback"
            conn.execute("SET LOCAL enable_indexscan = off")
            statement = select + sql.SQL(" WHERE ") + condition + sql.SQL(" AND ") + skip + sql.SQL(
                " ORDER BY t.embedding <=> %s LIMIT %s")
            rows = conn.execute(statement, (query, *area_params, excluded, query, k), prepare=False).fetchall()
    return rows, plan


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

    @property
    def ref(self) -> str:
        return f"{self.tile}/{self.date}/{self.chip_id}"


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


def similar_chips(
    conn: psycopg.Connection,
    product: str,
    chip: ChipRef | None = None,
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
    if chip is not None:
        places, described = [chip.place], str(chip)
    elif lonlat is not None:
        places, described = chip_places_at(*lonlat, int(found.meta.get("chip_size", 256))), f"lon/lat {tuple(lonlat)}"
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
    copies = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE place = %s").format(ident), (place,),
                          prepare=False).fetchone()[0]
    rows, plan = _neighbours(conn, found, query, ["chip", "lon", "lat", "place", "tile", "acquired", "chip_id"],
                             "place", place, k, area, ef_search, overfetch=copies)
    matches = [ChipMatch(int(c), float(d), float(lon), float(lat), t, str(a), cid)
               for c, d, lon, lat, _, t, a, cid in rows]
    return ChipSearchResult(f"{tile}/{acquired}/{chip_id}", found.model_version, f"{SCHEMA}.{found.table}", plan,
                            matches)


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

    from geoembed.core.geometry import box_lonlat
    from geoembed.core.grids.mgrs import ChipRef, tile_footprint

    features = []
    for rank, match in enumerate(result.matches, start=1):
        ref = ChipRef.from_key(match.chip)
        tile = tile_footprint(ref.tile)
        size = chip_size * 10.0
        xmin, ymax = tile.bounds[0] + ref.col * size, tile.bounds[3] - ref.row * size
        footprint = box_lonlat((xmin, ymax - size, xmin + size, ymax), tile.crs)
        features.append({"type": "Feature", "geometry": mapping(footprint),
                         "properties": {"rank": rank, "chip": match.ref, "tile": match.tile, "date": match.date,
                                        "chip_id": match.chip_id, "distance": match.distance}})
    return {"type": "FeatureCollection", "features": features,
            "properties": {"query": result.query, "model_version": result.model_version}}
