"""Land-cover windows around H3 cells, in the raster's own CRS and pixel grid.

For each cell, an S x S window of pixels centred on the cell's centre is gathered with numpy from
one decoded block per region (no per-cell raster reads). Global geographic rasters wrap across the
antimeridian and reflect across the poles. Every cell gets a status; none is dropped.

Stacked sources are read on the same ground footprint: the centre of each of the primary window's
pixels is carried into the stacked raster's CRS and the pixel holding it is read (nearest neighbour),
so an S x S window of every source covers the same ground whatever its CRS and resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from geoembed.core.rasters import RasterInfo, failing_reads

# Status codes stored per cell; the first three are embedded.
STATUSES = (
    "ok",  # every pixel of the window is a known class
    "edge",  # part of the window lies outside the raster; enough valid pixels remain
    "partial_nodata",  # some pixels are nodata; enough valid pixels remain
    "insufficient_data",  # fewer valid pixels than min_valid_fraction
    "all_nodata",  # no valid pixel
    "outside_raster",  # the whole window lies outside the raster
    "unknown_class",  # the window holds values missing from the legend (unknown_classes: flag)
)
STATUS_CODE = {name: code for code, name in enumerate(STATUSES)}
EMBEDDED = np.array([STATUS_CODE["ok"], STATUS_CODE["edge"], STATUS_CODE["partial_nodata"]], dtype=np.uint8)


def cell_statuses(stacked_sources: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """Status names by code for a product: the base statuses, then 'missing_<name>' for each stacked
    source (the primary source has enough valid pixels, that source has not: the cell is not embedded)."""
    return STATUSES + tuple(f"missing_{name}" for name in stacked_sources)


def missing_source_code(index: int) -> int:
    """The status code of a cell that stacked source ``index`` (in product order) leaves without data."""
    return len(STATUSES) + index


@dataclass(frozen=True)
class Legend:
    """Class values (sorted) and names. Class index i <-> values[i]; index len(values) = no data."""

    values: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_mapping(cls, mapping: dict[int, str]) -> Legend:
        items = sorted(mapping.items())
        return cls(np.array([k for k, _ in items], dtype=np.int64), tuple(v for _, v in items))

    @property
    def n_classes(self) -> int:
        return len(self.values)

    @property
    def nodata_index(self) -> int:
        return len(self.values)

    def indices(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index of each raw value and a mask of values that are in the legend."""
        pos = np.searchsorted(self.values, raw)
        pos = np.clip(pos, 0, len(self.values) - 1)
        known = self.values[pos] == raw
        return pos, known


@dataclass
class WindowSamples:
    """Windows and per-class statistics for a set of cells."""

    cells: np.ndarray  # (n,) uint64
    windows: np.ndarray  # (n, S, S) uint8 class index; legend.nodata_index where no valid class
    fractions: np.ndarray  # (n, C) float32, share of each class among valid pixels
    valid_fraction: np.ndarray  # (n,) float32
    status: np.ndarray  # (n,) uint8, see STATUSES
    unknown_values: np.ndarray  # distinct raw values found that are not in the legend

    @property
    def dominant(self) -> np.ndarray:
        """Index of the most frequent class, -1 where the window has no valid pixel."""
        dom = self.fractions.argmax(axis=1).astype(np.int16)
        dom[self.valid_fraction == 0] = -1
        return dom

    @property
    def embedded(self) -> np.ndarray:
        return np.isin(self.status, EMBEDDED)


def pixel_positions(info: RasterInfo, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (row, col) of lon/lat points in the raster's pixel grid."""
    if info.crs.is_geographic and info.crs.to_epsg() in (4326, None) and info.is_global_geographic:
        x, y = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    else:
        xs, ys = warp_transform("EPSG:4326", info.crs, np.asarray(lon).tolist(), np.asarray(lat).tolist())
        x, y = np.asarray(xs), np.asarray(ys)
    inverse = ~info.transform
    col = inverse.a * x + inverse.b * y + inverse.c
    row = inverse.d * x + inverse.e * y + inverse.f
    return row, col


def window_indices(info: RasterInfo, row: np.ndarray, col: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Pixel indices of each cell's window and a mask of those that fall inside the raster.

    The window is centred on the pixel corner nearest the cell centre: rows [r0 - S/2, r0 + S/2)."""
    half = size // 2
    offsets = np.arange(size) - half
    r0 = np.round(row).astype(np.int64)
    c0 = np.round(col).astype(np.int64)
    rows = np.broadcast_to(r0[:, None, None] + offsets[None, :, None], (len(r0), size, size)).copy()
    cols = np.broadcast_to(c0[:, None, None] + offsets[None, None, :], (len(c0), size, size)).copy()
    if info.reaches_poles:
        # Walking over a pole on a global lon/lat grid comes back down on the opposite meridian.
        north = rows < 0
        south = rows >= info.height
        rows[north] = -1 - rows[north]
        rows[south] = 2 * info.height - 1 - rows[south]
        cols[north | south] += info.width // 2
    if info.is_global_geographic:
        cols %= info.width
    inside = (rows >= 0) & (rows < info.height) & (cols >= 0) & (cols < info.width)
    return rows, cols, inside


class RasterBlocks:
    """Reads the pixels a set of windows needs: one decoded block per call, or a cached full array."""

    def __init__(self, src: rasterio.DatasetReader, cache_pixels: int = 64_000_000):
        self.src = src
        self._full: np.ndarray | None = None
        if src.width * src.height <= cache_pixels:
            with failing_reads(f"raster {src.name!r}"):
                self._full = src.read(1)

    def gather(self, rows: np.ndarray, cols: np.ndarray, inside: np.ndarray, fill: int | float,
               dtype: type = np.int64) -> np.ndarray:
        out = np.full(rows.shape, fill, dtype=dtype)
        if not inside.any():
            return out
        r, c = rows[inside], cols[inside]
        if self._full is not None:
            out[inside] = self._full[r, c]
            return out
        rmin, rmax, cmin, cmax = r.min(), r.max(), c.min(), c.max()
        with failing_reads(f"raster {self.src.name!r}"):
            block = self.src.read(1, window=Window(int(cmin), int(rmin), int(cmax - cmin + 1), int(rmax - rmin + 1)))
        out[inside] = block[r - rmin, c - cmin]
        return out


def sample_windows(
    blocks: RasterBlocks,
    info: RasterInfo,
    legend: Legend,
    cells: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    size: int,
    min_valid_fraction: float,
    flag_unknown: bool,
) -> WindowSamples:
    """Windows, class fractions and a status for every cell (none dropped)."""
    n = len(cells)
    row, col = pixel_positions(info, lat, lon)
    rows, cols, inside = window_indices(info, row, col, size)
    # A fill value no legend can hold: int64 min.
    outside_fill = np.iinfo(np.int64).min
    raw = blocks.gather(rows, cols, inside, outside_fill)
    is_nodata = inside & (raw == info.nodata) if info.nodata is not None else np.zeros_like(inside)
    class_index, known = legend.indices(raw)
    valid = inside & ~is_nodata & known
    unknown = inside & ~is_nodata & ~known
    windows = np.where(valid, class_index, legend.nodata_index).astype(np.uint8)

    pixels = size * size
    n_valid = valid.reshape(n, -1).sum(axis=1)
    n_outside = (~inside).reshape(n, -1).sum(axis=1)
    n_unknown = unknown.reshape(n, -1).sum(axis=1)
    n_nodata = is_nodata.reshape(n, -1).sum(axis=1)

    cell_of_pixel = np.broadcast_to(np.arange(n)[:, None, None], valid.shape)
    counts = np.bincount(
        (cell_of_pixel[valid] * legend.n_classes + class_index[valid]), minlength=n * legend.n_classes
    ).reshape(n, legend.n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(n_valid[:, None] > 0, counts / np.maximum(n_valid, 1)[:, None], 0.0).astype(np.float32)
    valid_fraction = (n_valid / pixels).astype(np.float32)

    status = np.full(n, STATUS_CODE["ok"], dtype=np.uint8)
    status[n_nodata > 0] = STATUS_CODE["partial_nodata"]
    status[n_outside > 0] = STATUS_CODE["edge"]
    status[valid_fraction < min_valid_fraction] = STATUS_CODE["insufficient_data"]
    status[n_valid == 0] = STATUS_CODE["all_nodata"]
    status[n_outside == pixels] = STATUS_CODE["outside_raster"]
    if flag_unknown:
        status[n_unknown > 0] = STATUS_CODE["unknown_class"]
    unknown_values = np.unique(raw[unknown]) if n_unknown.any() else np.zeros(0, dtype=np.int64)
    return WindowSamples(cells, windows, fractions, valid_fraction, status, unknown_values)


def has_foreground(samples: WindowSamples, legend: Legend, background_values: list[int]) -> np.ndarray:
    """Cells whose window holds some valid class other than the background classes."""
    foreground = ~np.isin(legend.values, np.asarray(background_values, dtype=np.int64))
    return (samples.fractions[:, foreground] > 0).any(axis=1) & samples.embedded


def holds_centres(info: RasterInfo, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Which points (cell centres) fall inside the raster's pixel grid: the cells a raster provides."""
    row, col = pixel_positions(info, lat, lon)
    return (row >= 0) & (row < info.height) & (((col >= 0) & (col < info.width)) | info.is_global_geographic)


def sample_mosaic(
    rasters: list[tuple[RasterBlocks, RasterInfo]],
    legend: Legend,
    cells: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    size: int,
    min_valid_fraction: float,
    flag_unknown: bool,
) -> tuple[WindowSamples, np.ndarray]:
    """Samples from a mosaic of rasters given newest first: each cell is sampled from the newest raster
    whose grid holds the cell's centre (cells no raster holds: from the first, as 'outside_raster').

    Returns the samples and, per cell, the index of the raster it was sampled from."""
    if not rasters:
        raise ValueError("a mosaic needs at least one raster")
    n = len(cells)
    source = np.full(n, -1, dtype=np.int64)
    for i, (_, info) in enumerate(rasters):
        if (source >= 0).all():
            break
        todo = source < 0
        idx = np.nonzero(todo)[0][holds_centres(info, lat[todo], lon[todo])]
        source[idx] = i
    source[source < 0] = 0
    if len(rasters) == 1 or (source == source[0]).all():
        blocks, info = rasters[int(source[0]) if n else 0]
        return sample_windows(blocks, info, legend, cells, lat, lon, size, min_valid_fraction, flag_unknown), source
    windows = np.empty((n, size, size), dtype=np.uint8)
    fractions = np.empty((n, legend.n_classes), dtype=np.float32)
    valid_fraction = np.empty(n, dtype=np.float32)
    status = np.empty(n, dtype=np.uint8)
    unknown: list[np.ndarray] = []
    for i in np.unique(source):
        rows = np.nonzero(source == i)[0]
        blocks, info = rasters[int(i)]
        part = sample_windows(blocks, info, legend, cells[rows], lat[rows], lon[rows], size, min_valid_fraction,
                              flag_unknown)
        windows[rows], fractions[rows] = part.windows, part.fractions
        valid_fraction[rows], status[rows] = part.valid_fraction, part.status
        unknown.append(part.unknown_values)
    return WindowSamples(cells, windows, fractions, valid_fraction, status, np.unique(np.concatenate(unknown))), source


# ---------------------------------------------------------------------------------------------
# Stacked sources on the same footprint
# ---------------------------------------------------------------------------------------------


def window_ground_points(info: RasterInfo, lat: np.ndarray, lon: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in ``info``'s CRS of the centre of every pixel of every cell's window: (n, S, S) each.
    Pixels beyond the raster's edge get the coordinates its grid would give them."""
    row, col = pixel_positions(info, lat, lon)
    rows, cols, _ = window_indices(info, row, col, size)
    t = info.transform
    x = t.a * (cols + 0.5) + t.b * (rows + 0.5) + t.c
    y = t.d * (cols + 0.5) + t.e * (rows + 0.5) + t.f
    if info.is_global_geographic:  # wrapped columns: bring longitudes back into [-180, 180)
        x = (x + 180.0) % 360.0 - 180.0
    return x, y


@dataclass
class StackedWindows:
    """One stacked source's windows on the primary footprint."""

    name: str
    kind: str  # "categorical" or "continuous"
    values: np.ndarray  # (n, S, S): class index (uint8, nodata_index where invalid) or float32 (NaN where invalid)
    valid_fraction: np.ndarray  # (n,) float32
    fractions: np.ndarray | None = None  # (n, C) float32, categorical only
    unknown_values: np.ndarray | None = None  # categorical only: raw values missing from the legend


def source_pixels(source: RasterInfo, points_crs, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Pixel (row, col) of ``source`` holding each point (given in ``points_crs``), and which lie inside."""
    if source.crs == points_crs:
        sx, sy = x, y
    else:
        from pyproj import Transformer

        transformer = Transformer.from_crs(points_crs, source.crs, always_xy=True)
        sx, sy = transformer.transform(x, y)
        sx, sy = np.asarray(sx), np.asarray(sy)
    inverse = ~source.transform
    col = np.floor(inverse.a * sx + inverse.b * sy + inverse.c).astype(np.int64)
    row = np.floor(inverse.d * sx + inverse.e * sy + inverse.f).astype(np.int64)
    if source.is_global_geographic:
        col %= source.width
    finite = np.isfinite(sx) & np.isfinite(sy)
    inside = finite & (row >= 0) & (row < source.height) & (col >= 0) & (col < source.width)
    return np.where(inside, row, 0), np.where(inside, col, 0), inside


def sample_stacked(
    name: str,
    kind: str,
    blocks: RasterBlocks,
    source: RasterInfo,
    primary: RasterInfo,
    lat: np.ndarray,
    lon: np.ndarray,
    size: int,
    legend: Legend | None = None,
) -> StackedWindows:
    """A stacked source's S x S windows on the footprint of the primary source's windows."""
    x, y = window_ground_points(primary, lat, lon, size)
    rows, cols, inside = source_pixels(source, primary.crs, x, y)
    n = len(lat)
    pixels = size * size
    if kind == "continuous":
        raw = blocks.gather(rows, cols, inside, np.nan, dtype=np.float64)
        valid = inside & np.isfinite(raw)
        if source.nodata is not None:
            valid &= ~np.isclose(raw, source.nodata)
        values = np.where(valid, raw, np.nan).astype(np.float32)
        return StackedWindows(name, kind, values, (valid.reshape(n, -1).sum(1) / pixels).astype(np.float32))
    if legend is None:
        raise ValueError(f"categorical stacked source {name!r} needs a legend")
    raw = blocks.gather(rows, cols, inside, np.iinfo(np.int64).min)
    is_nodata = inside & (raw == source.nodata) if source.nodata is not None else np.zeros_like(inside)
    class_index, known = legend.indices(raw)
    valid = inside & ~is_nodata & known
    unknown = inside & ~is_nodata & ~known
    n_valid = valid.reshape(n, -1).sum(axis=1)
    cell_of_pixel = np.broadcast_to(np.arange(n)[:, None, None], valid.shape)
    counts = np.bincount(cell_of_pixel[valid] * legend.n_classes + class_index[valid],
                         minlength=n * legend.n_classes).reshape(n, legend.n_classes)
    fractions = (counts / np.maximum(n_valid, 1)[:, None]).astype(np.float32)
    return StackedWindows(
        name, kind, np.where(valid, class_index, legend.nodata_index).astype(np.uint8),
        (n_valid / pixels).astype(np.float32), fractions,
        np.unique(raw[unknown]) if unknown.any() else np.zeros(0, dtype=np.int64))


def merge_rows(parts: list[tuple[np.ndarray, StackedWindows]], n: int) -> StackedWindows:
    """One source's windows for n cells from parts computed on subsets of rows."""
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]
    first = parts[0][1]

    def merged(field: str) -> np.ndarray | None:
        if getattr(first, field) is None:
            return None
        values = getattr(first, field)
        out = np.empty((n, *values.shape[1:]), dtype=values.dtype)
        for rows, part in parts:
            out[rows] = getattr(part, field)
        return out

    unknown = None if first.unknown_values is None else np.unique(np.concatenate([p.unknown_values for _, p in parts]))
    return StackedWindows(first.name, first.kind, merged("values"), merged("valid_fraction"), merged("fractions"),
                          unknown)


def apply_missing_sources(status: np.ndarray, stacked: list[StackedWindows], min_valid: list[float]) -> np.ndarray:
    """Statuses with embeddable cells that a stacked source leaves short of valid pixels marked
    'missing_<source>' (the first such source in product order)."""
    out = status.copy()
    embeddable = np.isin(out, EMBEDDED)
    for index, (windows, floor) in enumerate(zip(stacked, min_valid)):
        short = embeddable & (windows.valid_fraction < floor)
        out[short] = missing_source_code(index)
        embeddable &= ~short
    return out
