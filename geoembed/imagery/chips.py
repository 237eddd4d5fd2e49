"""Chips of a Sentinel-2 tile: the chip grid on the tile's 10 m pixel grid, every band of a scene
resampled onto it (bilinear for reflectance, nearest for the mask band), and what each chip holds
(no-data fraction and class, cloud fraction where the scene has a mask), plus an RGB thumbnail.

Chip (row, col) covers tile pixels [row*S, (row+1)*S) x [col*S, (col+1)*S) of the tile's 10,980 x
10,980 grid (S = chip size); chips of the last row and column reach past the tile's edge, which is no
data (neighbouring tiles overlap by 9.8 km, so nothing is lost). Chip ids are ``{row}_{col}``.
"""

from __future__ import annotations

import io
import math
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from geoembed.core.grids.mgrs import MgrsTile
from geoembed.core.grids.quadkey import MercatorTileGrid
from geoembed.core.rasters import RasterInputError, failing_reads
from geoembed.imagery.scenes import MASK_BAND, RGB_BANDS, S2_BANDS, SCL_CLOUD_CLASSES, Scene, SceneInputError

RESOLUTION = 10.0
NODATA_DN = 0  # Sentinel-2's no-data value in every band
NODATA_CLASSES = ("all_data", "partial", "no_data")
READ_BYTES = 64 * 2**20  # consecutive chip rows are read and resampled together up to this strip size
ALL_DATA, PARTIAL, NO_DATA = range(3)


@dataclass(frozen=True)
class ChipGrid:
    """The chips of one tile at one chip size."""

    tile: MgrsTile
    chip_size: int

    @property
    def crs(self) -> str:
        return self.tile.crs

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return self.tile.bounds

    @property
    def resolution(self) -> float:
        return RESOLUTION

    @property
    def name(self) -> str:
        return self.tile.tile_id

    def describe(self) -> str:
        s = self.chip_size
        return (f"tile pixels [row*{s}, (row+1)*{s}) x [col*{s}, (col+1)*{s}) of the tile's 10 m grid "
                f"from its upper-left corner {list(self.tile.bounds[0::3])}")

    def chip_ids(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return chip_ids(rows, cols)

    @property
    def tile_pixels(self) -> int:
        return int(round((self.tile.bounds[2] - self.tile.bounds[0]) / RESOLUTION))

    @property
    def chips_per_side(self) -> int:
        return math.ceil(self.tile_pixels / self.chip_size)

    @property
    def transform(self) -> Affine:
        """The tile's 10 m pixel grid (upper-left origin)."""
        return Affine(RESOLUTION, 0.0, self.tile.bounds[0], 0.0, -RESOLUTION, self.tile.bounds[3])

    @property
    def chip_metres(self) -> float:
        return self.chip_size * RESOLUTION

    def chip_bounds(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(n, 4) bounds (xmin, ymin, xmax, ymax) in the tile's CRS."""
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        xmin = self.tile.bounds[0] + cols * self.chip_metres
        ymax = self.tile.bounds[3] - rows * self.chip_metres
        return np.column_stack([xmin, ymax - self.chip_metres, xmin + self.chip_metres, ymax])

    def all_chips(self) -> tuple[np.ndarray, np.ndarray]:
        """Every chip's (row, col), row-major."""
        rows, cols = np.divmod(np.arange(self.chips_per_side ** 2), self.chips_per_side)
        return rows.astype(np.int32), cols.astype(np.int32)

    def chips_overlapping(self, bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the chips that overlap a box in the tile CRS, row-major."""
        xmin, ymin, xmax, ymax = bounds
        left, top = self.tile.bounds[0], self.tile.bounds[3]
        c0 = max(0, math.floor((xmin - left) / self.chip_metres))
        c1 = min(self.chips_per_side, math.ceil((xmax - left) / self.chip_metres))
        r0 = max(0, math.floor((top - ymax) / self.chip_metres))
        r1 = min(self.chips_per_side, math.ceil((top - ymin) / self.chip_metres))
        if c1 <= c0 or r1 <= r0:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        return rows.ravel().astype(np.int32), cols.ravel().astype(np.int32)


def chip_ids(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.array([f"{int(r)}_{int(c)}" for r, c in zip(rows, cols)], dtype=object)


def parse_chip_id(text: str) -> tuple[int, int]:
    row, _, col = str(text).partition("_")
    if not (row.isdigit() and col.isdigit()):
        raise ValueError(f"chip id {text!r} is not '<row>_<col>'")
    return int(row), int(col)


# ---------------------------------------------------------------------------------------------
# A scene's bands on the chip grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandFile:
    """What the chipper needs to know about one band file."""

    band: str
    location: str
    crs: str
    bounds: tuple[float, float, float, float]
    resolution: float


def describe_band(band: str, location: str, src: rasterio.DatasetReader) -> BandFile:
    if src.crs is None:
        raise SceneInputError(f"band {band} ({location}) has no CRS")
    if src.transform.b != 0 or src.transform.d != 0:
        raise SceneInputError(f"band {band} ({location}) is rotated; Sentinel-2 bands are north-up")
    b = src.bounds
    return BandFile(band, location, src.crs.to_string(), (b.left, b.bottom, b.right, b.top), abs(src.transform.a))


def scene_extent(scene: Scene, grid: ChipGrid | MercatorTileGrid, bands: list[BandFile]
                 ) -> tuple[float, float, float, float]:
    """Where every band has pixels: the intersection of the bands' footprints, in the grid's CRS.

    Bands must share one CRS (on an MGRS grid: the tile's), and their footprints may differ by less than
    one of their own pixels at each edge (real subsets cut the 10, 20 and 60 m grids a pixel apart);
    beyond that the scene's bands do not line up and the scene is refused. On another grid (web-mercator
    tiles) the extent is the bands' box carried into the grid's CRS."""
    tile = getattr(grid, "tile", None)
    for b in bands:
        if tile is not None and b.crs != tile.crs:
            raise SceneInputError(f"scene {scene.scene_id}: band {b.band} ({b.location}) is in {b.crs}, but tile "
                                  f"{tile.tile_id} is in {tile.crs}")
        if b.crs != bands[0].crs:
            raise SceneInputError(f"scene {scene.scene_id}: band {b.band} ({b.location}) is in {b.crs}, band "
                                  f"{bands[0].band} in {bands[0].crs}")
    finest = min(bands, key=lambda b: b.resolution)
    for b in bands:
        gaps = np.abs(np.subtract(b.bounds, finest.bounds))
        if (gaps > max(b.resolution, finest.resolution) + 1e-6).any():
            raise SceneInputError(
                f"scene {scene.scene_id}: band {b.band} ({b.location}) covers {_fmt(b.bounds)} but band "
                f"{finest.band} covers {_fmt(finest.bounds)}; the bands' extents do not match")
    xmin = max(b.bounds[0] for b in bands)
    ymin = max(b.bounds[1] for b in bands)
    xmax = min(b.bounds[2] for b in bands)
    ymax = min(b.bounds[3] for b in bands)
    if xmax <= xmin or ymax <= ymin:
        raise SceneInputError(f"scene {scene.scene_id}: its bands do not overlap")
    if bands[0].crs != grid.crs:
        return transform_bounds(bands[0].crs, grid.crs, xmin, ymin, xmax, ymax, densify_pts=21)
    return (xmin, ymin, xmax, ymax)


def _fmt(bounds) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in bounds) + "]"


@dataclass
class ChipBlock:
    """The chips of one chip row (consecutive columns): bands on the 10 m grid and their validity."""

    row: int
    cols: np.ndarray  # (n,)
    dn: np.ndarray  # (n, bands, S, S) uint16, 0 = no data
    valid: np.ndarray  # (n, S, S) bool: inside the tile and the scene, every band > 0
    mask: np.ndarray | None  # (n, S, S) uint8 scene classification, where the scene has one

    @property
    def nodata_fraction(self) -> np.ndarray:
        return 1.0 - self.valid.reshape(len(self.cols), -1).mean(axis=1)

    @property
    def nodata_class(self) -> np.ndarray:
        fraction = self.nodata_fraction
        return np.where(fraction <= 0, ALL_DATA, np.where(fraction >= 1, NO_DATA, PARTIAL)).astype(np.uint8)

    @property
    def cloud_fraction(self) -> np.ndarray:
        """Share of each chip's valid pixels that the mask calls cloud or cloud shadow (NaN: no mask or no
        valid pixel)."""
        n = len(self.cols)
        if self.mask is None:
            return np.full(n, np.nan, dtype=np.float32)
        cloud = np.isin(self.mask, SCL_CLOUD_CLASSES) & self.valid
        valid = self.valid.reshape(n, -1).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid > 0, cloud.reshape(n, -1).sum(axis=1) / valid, np.nan).astype(np.float32)


class SceneChipper:
    """Reads a scene's bands chip row by chip row onto a chip grid: an MGRS tile's 10 m grid, or web-mercator
    tiles (one reprojection per band and chip row, so memory stays at one row of chips whatever the tile)."""

    def __init__(self, scene: Scene, grid: ChipGrid | MercatorTileGrid, bands: list[str],
                 open_band: Callable[[str], ContextManager[rasterio.DatasetReader]]):
        scene.check_bands(bands)
        self.scene, self.grid, self.bands = scene, grid, list(bands)
        self._stack = ExitStack()
        self.sources: dict[str, rasterio.DatasetReader] = {}
        described = []
        names = self.bands + ([MASK_BAND] if scene.has_cloud_mask else [])
        try:
            for band in names:
                location = scene.bands[band]
                src = self._stack.enter_context(open_band(location))
                self.sources[band] = src
                described.append(describe_band(band, location, src))
            self.band_files = {b.band: b for b in described}
            self.extent = scene_extent(scene, grid, described)
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> SceneChipper:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def chips(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the chips the scene overlaps, row-major (the datacube's chips)."""
        return self.grid.chips_overlapping(self.extent)

    def blocks(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None,
               max_bytes: int = READ_BYTES) -> Iterator[ChipBlock]:
        """A ChipBlock per chip row of the given chips (default: every chip the scene overlaps), row-major.
        Consecutive chip rows are read together while their strip stays under ``max_bytes`` (one read and one
        reprojection per band for many small chips; a row at a time for wide tiles of large chips)."""
        if rows is None or cols is None:
            rows, cols = self.chips()
        if not len(rows):
            return
        width_chips = int(cols.max()) - int(cols.min()) + 1
        row_bytes = self.grid.chip_size ** 2 * width_chips * (len(self.bands) + 1) * 2
        per_read = max(1, max_bytes // row_bytes)
        group: list[int] = []
        for row in (int(r) for r in np.unique(rows)):
            if group and (row != group[-1] + 1 or len(group) == per_read):
                yield from self._read_rows(group, [cols[rows == r] for r in group])
                group = []
            group.append(row)
        yield from self._read_rows(group, [cols[rows == r] for r in group])

    def read_block(self, row: int, cols: np.ndarray) -> ChipBlock:
        """The chips ``cols`` of chip row ``row``."""
        return self._read_rows([row], [cols])[0]

    def _read_rows(self, rows: list[int], cols_of: list[np.ndarray]) -> list[ChipBlock]:
        """Consecutive chip rows read as one strip (each band resampled once), split into a block per row."""
        s = self.grid.chip_size
        c0 = min(int(c.min()) for c in cols_of)
        width = (max(int(c.max()) for c in cols_of) - c0 + 1) * s
        height = len(rows) * s
        origin = self.grid.transform * (c0 * s, rows[0] * s)
        res = self.grid.resolution
        transform = Affine(res, 0.0, origin[0], 0.0, -res, origin[1])
        strip = np.zeros((len(self.bands), height, width), dtype=np.uint16)
        for i, band in enumerate(self.bands):
            self._reproject(band, strip[i], transform, Resampling.bilinear)
        mask_strip = None
        if MASK_BAND in self.sources:
            mask_strip = np.zeros((height, width), dtype=np.uint8)
            self._reproject(MASK_BAND, mask_strip, transform, Resampling.nearest)
        valid = (strip > NODATA_DN).all(axis=0) & self._inside(transform, (height, width))
        blocks = []
        for k, (row, cols) in enumerate(zip(rows, cols_of)):
            band_rows = slice(k * s, (k + 1) * s)
            mask = None if mask_strip is None else _split(mask_strip[None, band_rows], cols - c0, s)[:, 0]
            blocks.append(ChipBlock(row, cols, _split(strip[:, band_rows], cols - c0, s),
                                    _split(valid[None, band_rows], cols - c0, s)[:, 0], mask))
        return blocks

    def _reproject(self, band: str, out: np.ndarray, transform: Affine, resampling: Resampling) -> None:
        """Resample the band onto ``out`` (the 10 m grid at ``transform``). The source pixels are read
        explicitly first: GDAL's warper only logs a decoding error (a truncated JP2) and carries on with
        no data, while a read raises it."""
        src = self.sources[band]
        height, width = out.shape
        left, top = transform.c, transform.f
        right, bottom = left + width * self.grid.resolution, top - height * self.grid.resolution
        if self.grid.crs != src.crs:  # the strip's box in the band's CRS (densified edges)
            left, bottom, right, top = transform_bounds(self.grid.crs, src.crs, left, bottom, right, top,
                                                        densify_pts=21)
        margin = 2 * abs(src.transform.a)  # bilinear needs the neighbours of edge pixels
        wanted = from_bounds(left - margin, bottom - margin, right + margin, top + margin, src.transform)
        col0, row0 = math.floor(wanted.col_off), math.floor(wanted.row_off)
        col1, row1 = math.ceil(wanted.col_off + wanted.width), math.ceil(wanted.row_off + wanted.height)
        try:
            window = Window(col0, row0, col1 - col0, row1 - row0).intersection(Window(0, 0, src.width, src.height))
            with failing_reads(f"band {band} of scene {self.scene.scene_id} ({self.scene.bands[band]})"):
                pixels = src.read(self.scene.band_index.get(band, 1), window=window)
            if self.scene.radiometry is not None:  # any other raster: its values as Sentinel-2-like DNs
                pixels = values_as_dn(pixels, *self.scene.radiometry, file_nodata=src.nodata)
        except rasterio.errors.WindowError:  # (a RasterioError: caught first)
            return  # the strip lies outside this band: no data
        except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as exc:
            raise RasterInputError(f"band {band} of scene {self.scene.scene_id} ({self.scene.bands[band]}) cannot "
                                   f"be read: {str(exc).strip()}") from None
        reproject(source=pixels, destination=out, src_transform=src.window_transform(window), src_crs=src.crs,
                  src_nodata=NODATA_DN, dst_transform=transform, dst_crs=self.grid.crs, dst_nodata=NODATA_DN,
                  resampling=resampling)

    def _inside(self, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
        """Pixels inside both the scene's common extent and the grid (on a reprojected grid the box is a
        bound: pixels the bands do not reach are no data after the reprojection anyway)."""
        xmin, ymin, xmax, ymax = self.extent
        t = self.grid.bounds
        xmin, ymin, xmax, ymax = max(xmin, t[0]), max(ymin, t[1]), min(xmax, t[2]), min(ymax, t[3])
        x = transform.c + (np.arange(shape[1]) + 0.5) * self.grid.resolution
        y = transform.f - (np.arange(shape[0]) + 0.5) * self.grid.resolution
        return ((y > ymin) & (y < ymax))[:, None] & ((x > xmin) & (x < xmax))[None, :]


def values_as_dn(stored: np.ndarray, scale: float, offset: float, nodata: float | None,
                 file_nodata: float | None = None) -> np.ndarray:
    """Stored values of any raster as uint16 DNs of the datacube (value = stored x scale + offset; DN = value x
    10,000, clipped to 1..65,535 so that 0 stays no data): the configured nodata (else the file's), NaN and
    infinities become 0."""
    values = stored.astype(np.float64) * scale + offset
    invalid = ~np.isfinite(values)
    missing = nodata if nodata is not None else file_nodata
    if missing is not None:
        invalid |= np.isnan(stored) if np.isnan(missing) else stored == missing
    dn = np.clip(np.rint(np.nan_to_num(values) * 10_000.0), 1, 65_535).astype(np.uint16)
    dn[invalid] = NODATA_DN
    return dn


def _split(strip: np.ndarray, offsets: np.ndarray, s: int) -> np.ndarray:
    """(bands, S, W) strip -> (n, bands, S, S) chips at the given chip offsets within the strip."""
    return np.stack([strip[:, :, int(o) * s:(int(o) + 1) * s] for o in offsets])


def reflectance(dn: np.ndarray, dn_offset: int) -> np.ndarray:
    """Top-of-atmosphere (L1C) or surface (L2A) reflectance from DNs; no-data (0) becomes NaN."""
    out = (dn.astype(np.float32) + dn_offset) / 10_000.0
    out[dn == NODATA_DN] = np.nan
    return out


def rgb_thumbnail(dn: np.ndarray, valid: np.ndarray, bands: list[str], dn_offset: int,
                  percentiles: tuple[float, float] = (2.0, 98.0), rgb: tuple[str, ...] = RGB_BANDS) -> bytes:
    """An RGB PNG of one chip (``rgb``: B04, B03, B02 for Sentinel-2), stretched between the 2nd and 98th percentile of its valid
    pixels (one stretch for the three bands, so colours keep their balance); no data is transparent."""
    from PIL import Image

    rgb = np.stack([reflectance(dn[bands.index(b)], dn_offset) for b in rgb], axis=-1)
    alpha = valid.astype(bool)
    image = np.zeros((*valid.shape, 4), dtype=np.uint8)
    if alpha.any():
        lo, hi = np.nanpercentile(rgb[alpha], percentiles)
        scaled = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        image[..., :3] = np.where(alpha[..., None], np.nan_to_num(scaled) * 255, 0).astype(np.uint8)
    image[..., 3] = np.where(alpha, 255, 0)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def band_wavelengths(bands: list[str]) -> np.ndarray:
    """Sentinel-2 central wavelengths (µm); NaN for bands of other rasters (not known)."""
    return np.array([S2_BANDS[b].wavelength if b in S2_BANDS else np.nan for b in bands], dtype=np.float32)
