"""Geometry shared by the pipelines (shapely): areas of interest from GeoJSON or a bbox, with the
antimeridian handled, and footprints of projected boxes in lon/lat.

Areas are lon/lat (OGC:CRS84) polygons; an area that crosses the antimeridian is split into parts on
either side of it (RFC 7946), so every part spans less than 180 degrees of longitude.
"""

from __future__ import annotations

import json
import functools
from pathlib import Path

import antimeridian
import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import MultiPolygon, Polygon, mapping, shape

from geoembed.core.errors import InputError


class GeometryInputError(InputError):
    """A GeoJSON or bbox area of interest is unreadable, not an area, or invalid."""


def read_geojson(value: str | dict | Path) -> tuple[dict, str]:
    """A GeoJSON object from a dict, inline JSON text or a file path, and a description of its source."""
    if isinstance(value, dict):
        return value, "GeoJSON"
    text, source = str(value), "GeoJSON"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise GeometryInputError(f"GeoJSON {text!r} is neither a JSON object nor an existing file")
        source = f"GeoJSON file {text!r}"
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise GeometryInputError(f"{source} is not a text file") from None
    try:
        return json.loads(text), source
    except json.JSONDecodeError as exc:
        raise GeometryInputError(f"{source} is not valid JSON: {exc}") from None


def geojson_polygons(obj: dict, source: str = "GeoJSON") -> list[dict]:
    """The Polygon/MultiPolygon geometries of a geometry, Feature or FeatureCollection."""
    if not isinstance(obj, dict) or "type" not in obj:
        raise GeometryInputError(f"{source} must be a GeoJSON object with a 'type'")
    kind = obj["type"]
    if kind == "FeatureCollection":
        found = [g for f in obj.get("features", []) for g in geojson_polygons(f, source)]
        if not found:
            raise GeometryInputError(f"{source}: the FeatureCollection holds no Polygon or MultiPolygon")
        return found
    if kind == "Feature":
        return geojson_polygons(obj.get("geometry") or {}, source)
    if kind in ("Polygon", "MultiPolygon"):
        return [obj]
    raise GeometryInputError(f"{source}: geometry type {kind!r} is not an area (use Polygon or MultiPolygon)")


def area_of_interest(value: str | dict | Path) -> MultiPolygon:
    """An area of interest as lon/lat polygons: GeoJSON (Polygon, MultiPolygon, Feature, FeatureCollection;
    inline, a dict or a file). Rings must be valid and within lon [-180, 180], lat [-90, 90]; a polygon
    drawn across the antimeridian (consecutive longitudes jumping by more than 180) is split there."""
    obj, source = read_geojson(value)
    parts: list[Polygon] = []
    for geometry in geojson_polygons(obj, source):
        try:
            geom = shape(geometry)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, shapely.errors.GEOSException) as exc:
            raise GeometryInputError(f"{source}: invalid {geometry.get('type')} geometry: {exc}") from None
        if geom.is_empty:
            raise GeometryInputError(f"{source}: the {geometry.get('type')} is empty")
        xmin, ymin, xmax, ymax = geom.bounds
        if xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90:
            raise GeometryInputError(f"{source}: coordinates must be lon in [-180, 180], lat in [-90, 90] "
                                     f"(bounds {[round(v, 6) for v in geom.bounds]})")
        fixed = shape(antimeridian.fix_shape(mapping(geom)))  # splits rings that cross the antimeridian
        if not fixed.is_valid:
            raise GeometryInputError(f"{source}: invalid {geometry.get('type')}: {shapely.validation.explain_validity(fixed)}")
        parts.extend(fixed.geoms if isinstance(fixed, MultiPolygon) else [fixed])
    return MultiPolygon(parts)


def bbox_area(west: float, south: float, east: float, north: float) -> MultiPolygon:
    """A lon/lat box; west > east crosses the antimeridian (two parts)."""
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90) or west == east:
        raise GeometryInputError(f"bbox {[west, south, east, north]} is invalid: need -180<=west,east<=180, "
                                 "west!=east, -90<=south<north<=90")
    spans = [(west, east)] if west < east else [(west, 180.0), (-180.0, east)]
    return MultiPolygon([shapely.box(w, south, e, north) for w, e in spans])


@functools.lru_cache(maxsize=64)
def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def box_lonlat(bounds: tuple[float, float, float, float], crs: str, points_per_edge: int = 5) -> Polygon | MultiPolygon:
    """A box in a projected CRS as a lon/lat polygon (edges densified, antimeridian split when crossed)."""
    xmin, ymin, xmax, ymax = bounds
    t = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)
    xs = np.concatenate([xmin + (xmax - xmin) * t, np.full_like(t, xmax), xmax - (xmax - xmin) * t, np.full_like(t, xmin)])
    ys = np.concatenate([np.full_like(t, ymin), ymin + (ymax - ymin) * t, np.full_like(t, ymax), ymax - (ymax - ymin) * t])
    lon, lat = _to_lonlat(crs).transform(xs, ys)
    ring = np.column_stack([lon, lat])
    polygon = Polygon(np.vstack([ring, ring[:1]]))
    if np.ptp(lon) <= 180:
        return polygon
    return antimeridian.fix_polygon(polygon)


def boxes_lonlat(bounds: np.ndarray, crs: str) -> np.ndarray:
    """Many projected boxes (n, 4) as lon/lat polygons (corners only; small boxes such as chips)."""
    b = np.asarray(bounds, dtype=np.float64)
    xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0]], axis=1)
    ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]], axis=1)
    lon, lat = _to_lonlat(crs).transform(xs.ravel(), ys.ravel())
    lon, lat = np.asarray(lon).reshape(-1, 4), np.asarray(lat).reshape(-1, 4)
    out = np.empty(len(b), dtype=object)
    for i in range(len(b)):
        ring = np.column_stack([lon[i], lat[i]])
        polygon = Polygon(np.vstack([ring, ring[:1]]))
        out[i] = polygon if np.ptp(lon[i]) <= 180 else antimeridian.fix_polygon(polygon)
    return out
