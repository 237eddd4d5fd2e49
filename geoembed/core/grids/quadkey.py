"""Web-mercator tiles as a chip grid: chip (row, col) at zoom z is the XYZ tile (x=col, y=row, z), named by
its quadkey (mercantile does the tile arithmetic), on EPSG:3857's pixel grid of ``chip_size`` pixels a tile.

The grid has the same interface as the MGRS chip grid (``geoembed.imagery.chips.ChipGrid``), so the one
scene chipper resamples imagery onto either.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import mercantile
import numpy as np
from affine import Affine

from geoembed.core.errors import InputError

WEB_MERCATOR = "EPSG:3857"
ORIGIN = 20037508.342789244  # half the projected world's width in metres (mercantile's constant)
MAX_ZOOM = 24  # finer than any imagery a chip would hold (~1 cm at the equator with 256 px tiles)


class QuadkeyError(InputError):
    """A quadkey, zoom or tile that cannot be used."""


@dataclass(frozen=True)
class MercatorTileGrid:
    """The chips of the web-mercator tiling at one zoom: chip (row, col) = tile (x=col, y=row)."""

    zoom: int
    chip_size: int = 256  # pixels a tile (a chip) along each edge

    def __post_init__(self) -> None:
        if not 0 <= self.zoom <= MAX_ZOOM:
            raise QuadkeyError(f"zoom {self.zoom} is out of range (0..{MAX_ZOOM})")

    @property
    def crs(self) -> str:
        return WEB_MERCATOR

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (-ORIGIN, -ORIGIN, ORIGIN, ORIGIN)

    @property
    def chips_per_side(self) -> int:
        return 2 ** self.zoom

    @property
    def resolution(self) -> float:
        """Metres (projected) a pixel."""
        return 2 * ORIGIN / (self.chip_size * self.chips_per_side)

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, -ORIGIN, 0.0, -self.resolution, ORIGIN)

    @property
    def chip_metres(self) -> float:
        return self.chip_size * self.resolution

    def chip_bounds(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(n, 4) bounds (xmin, ymin, xmax, ymax) in EPSG:3857."""
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        xmin = -ORIGIN + cols * self.chip_metres
        ymax = ORIGIN - rows * self.chip_metres
        return np.column_stack([xmin, ymax - self.chip_metres, xmin + self.chip_metres, ymax])

    def chips_overlapping(self, bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the tiles overlapping a box in EPSG:3857, row-major."""
        xmin, ymin, xmax, ymax = bounds
        n = self.chips_per_side
        c0 = max(0, math.floor((xmin + ORIGIN) / self.chip_metres))
        c1 = min(n, math.ceil((xmax + ORIGIN) / self.chip_metres))
        r0 = max(0, math.floor((ORIGIN - ymax) / self.chip_metres))
        r1 = min(n, math.ceil((ORIGIN - ymin) / self.chip_metres))
        if c1 <= c0 or r1 <= r0:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        return rows.ravel().astype(np.int32), cols.ravel().astype(np.int32)

    def quadkeys(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.array([mercantile.quadkey(int(c), int(r), self.zoom) for r, c in zip(rows, cols)], dtype=object)

    def chip_ids(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """A chip is named by its quadkey."""
        return self.quadkeys(rows, cols)

    @property
    def name(self) -> str:
        return f"web-mercator z{self.zoom}"

    def describe(self) -> str:
        return (f"XYZ tile (x=col, y=row) at zoom {self.zoom} of the web-mercator tiling (EPSG:3857), "
                f"{self.chip_size} px a tile; chip_id is its quadkey")

    def tiles_under(self, quadkey: str) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of this zoom's tiles inside a coarser tile, row-major."""
        parent = tile_of_quadkey(quadkey)
        if parent.z > self.zoom:
            raise QuadkeyError(f"quadkey {quadkey!r} (zoom {parent.z}) is finer than the chips' zoom {self.zoom}")
        k = 2 ** (self.zoom - parent.z)
        rows, cols = np.meshgrid(np.arange(parent.y * k, (parent.y + 1) * k), np.arange(parent.x * k, (parent.x + 1) * k),
                                 indexing="ij")
        return rows.ravel().astype(np.int32), cols.ravel().astype(np.int32)


def tile_of_quadkey(quadkey: str) -> mercantile.Tile:
    """The XYZ tile a quadkey names; an invalid quadkey is a QuadkeyError naming it."""
    text = str(quadkey)
    if not text or any(ch not in "0123" for ch in text) or len(text) > MAX_ZOOM:
        raise QuadkeyError(f"quadkey {text!r} is not a string of 1 to {MAX_ZOOM} digits 0-3")
    return mercantile.quadkey_to_tile(text)


def parent_quadkey(quadkey: str, zoom: int) -> str:
    """The quadkey of the tile at ``zoom`` holding ``quadkey``'s tile (a prefix)."""
    if not 0 < zoom <= len(quadkey):
        raise QuadkeyError(f"zoom {zoom} is not coarser than quadkey {quadkey!r} (zoom {len(quadkey)})")
    return quadkey[:zoom]


def ground_resolution(zoom: int, latitude: float, chip_size: int = 256) -> float:
    """Metres on the ground a pixel at ``latitude`` (web mercator stretches by 1 / cos(latitude))."""
    return 2 * ORIGIN / (chip_size * 2 ** zoom) * math.cos(math.radians(latitude))


def zoom_for_resolution(metres: float, latitude: float, chip_size: int = 256) -> int:
    """The zoom whose pixel on the ground at ``latitude`` is nearest ``metres`` (in log scale: halving
    and doubling are equally far)."""
    if metres <= 0:
        raise QuadkeyError(f"ground resolution {metres} m must be positive")
    exact = math.log2(2 * ORIGIN * math.cos(math.radians(latitude)) / (chip_size * metres))
    return int(min(MAX_ZOOM, max(0, round(exact))))


# Table keys (PostgreSQL bigint): the tile as zoom (5 bits), y and x (20 bits each), then 16 bits of days.
TABLE_MAX_ZOOM = 20


def place_key(tile: mercantile.Tile) -> int:
    """The ground a quadkey chip covers, whatever the date."""
    if tile.z > TABLE_MAX_ZOOM:
        raise QuadkeyError(f"zoom {tile.z} chips cannot be keyed in a table (at most zoom {TABLE_MAX_ZOOM})")
    return (int(tile.z) << 40) | (int(tile.y) << 20) | int(tile.x)


def tile_of_place(key: int) -> mercantile.Tile:
    key = int(key)
    return mercantile.Tile(key & 0xFFFFF, (key >> 20) & 0xFFFFF, key >> 40)


def chip_key(tile: mercantile.Tile, date: str) -> int:
    """One quadkey chip of one acquisition date (< 2**61)."""
    from geoembed.core.grids.mgrs import day_number

    return (place_key(tile) << 16) | day_number(date)


@dataclass(frozen=True)
class QuadkeyRef:
    """A quadkey chip named by people: its quadkey and acquisition date (None: the newest)."""

    quadkey: str
    date: str | None = None

    @property
    def place(self) -> int:
        return place_key(tile_of_quadkey(self.quadkey))

    def __str__(self) -> str:
        return f"{self.quadkey}/{self.date or '*'}"

    @classmethod
    def parse(cls, text: str) -> QuadkeyRef:
        """'1202102233323' or '1202102233323/2017-02-16'."""
        quadkey, _, date = str(text).strip().partition("/")
        tile_of_quadkey(quadkey)
        if date:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
                raise QuadkeyError(f"chip {text!r}: {date!r} is not a date YYYY-MM-DD")
        return cls(quadkey, date or None)


def quadkey_footprints(keys: np.ndarray) -> list:
    """The lon/lat footprints (shapely boxes) of quadkey chips given by their table keys."""
    import shapely

    out = []
    for key in keys:
        b = mercantile.bounds(tile_of_place(int(key) >> 16))
        out.append(shapely.box(b.west, b.south, b.east, b.north))
    return out
