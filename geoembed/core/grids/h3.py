"""H3 grid logic: regions (partitions), their fine cells, and the product's row layout.

Cell ids are uint64 (MISSION.md section 3). Region partition keys are H3 strings of the region cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import h3
import h3.api.basic_int as h3i
import numpy as np

from geoembed.core.errors import InputError


class PartitionKeyError(InputError):
    """A region partition key is not a valid H3 cell of the product's region resolution."""


def parse_region_key(key: str, region_res: int) -> int:
    """The H3 cell (int) behind a region partition key, validated."""
    try:
        valid = h3.is_valid_cell(key)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise PartitionKeyError(f"partition key {key!r} is not an H3 cell id (expected e.g. '81083ffffffffff')")
    res = h3.get_resolution(key)
    if res != region_res:
        raise PartitionKeyError(
            f"partition key {key!r} is an H3 cell of resolution {res}; this product's regions have resolution {region_res}"
        )
    return h3.str_to_int(key)


def region_key(region: int) -> str:
    return h3.int_to_str(int(region))


def region_cells(region: int, resolution: int) -> np.ndarray:
    """The fine cells of a region, sorted, as uint64."""
    return np.sort(np.fromiter(h3i.cell_to_children(int(region), resolution), dtype=np.uint64))


def kept_cells(region: int, resolution: int, kept: Sequence[int] | None = None) -> np.ndarray:
    """The fine cells of a region, sorted (uint64); with ``kept``, only those of these sub-regions (a
    stencil finer than the regions keeps the sub-regions that hold data)."""
    if kept is None:
        return region_cells(region, resolution)
    parts = [region_cells(int(sub), resolution) for sub in sorted(int(k) for k in kept)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def kept_cell_count(region: int, resolution: int, kept: Sequence[int] | None = None) -> int:
    """How many cells ``kept_cells`` gives, without listing them."""
    return sum(h3i.cell_to_children_size(int(cell), resolution) for cell in ([region] if kept is None else kept))


def cell_centres(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of each cell's centre."""
    latlng = np.array([h3i.cell_to_latlng(int(c)) for c in cells], dtype=np.float64).reshape(-1, 2)
    return latlng[:, 0], latlng[:, 1]


def parent_cells(cells: np.ndarray, resolution: int) -> np.ndarray:
    """Each cell's ancestor at ``resolution`` (uint64; the cells must be at that resolution or finer),
    with integer operations on the ids: the resolution field is set and the finer digits become 7
    (unused), as H3 itself does. ``h3.cell_to_parent`` per cell, vectorised."""
    ids = np.asarray(cells, dtype=np.uint64)
    parents = (ids & ~np.uint64(0xF << 52)) | np.uint64(resolution << 52)
    unused = sum(7 << ((15 - digit) * 3) for digit in range(resolution + 1, 16))
    return parents | np.uint64(unused)


def cells_at(resolution: int) -> np.ndarray:
    """Every H3 cell of a resolution (for coarse resolutions: regions of the whole globe)."""
    if resolution > 3:
        raise ValueError("enumerating every cell is meant for coarse region resolutions (0-3)")
    cells = [c for base in h3i.get_res0_cells() for c in h3i.cell_to_children(base, resolution)]
    return np.sort(np.array(cells, dtype=np.uint64))


def regions_touching(bounds: tuple[float, float, float, float], region_res: int) -> np.ndarray:
    """Regions that overlap a lon/lat box, plus a ring of neighbours (windows reach past a cell).

    ``bounds`` is (west, south, east, north); west > east means the box crosses the antimeridian."""
    west, south, east, north = bounds
    if east - west >= 359.0 and north - south >= 179.0 and region_res <= 3:
        return cells_at(region_res)
    boxes = [(west, south, east, north)] if west <= east else [(west, south, 180.0, north), (-180.0, south, east, north)]
    found: set[int] = set()
    for w, s, e, n in boxes:
        # Split wide boxes: H3 polygons must span less than 180 degrees of longitude.
        edges = np.linspace(w, e, int(np.ceil((e - w) / 90.0)) + 1) if e > w else [w, e]
        for a, b in zip(edges[:-1], edges[1:]):
            shape = h3.LatLngPoly([(s, a), (s, b), (n, b), (n, a)])
            cells = h3.h3shape_to_cells_experimental(shape, region_res, contain="overlap")
            found.update(h3.str_to_int(c) for c in cells)
    ring = {n for c in found for n in h3i.grid_disk(c, 1)}
    return np.sort(np.array(sorted(found | ring), dtype=np.uint64))


@dataclass(frozen=True)
class ProductLayout:
    """Rows of the product store: each region owns a chunk-aligned slot of ``slot`` rows.

    Hexagon regions have exactly ``slot = 7**(res - region_res)`` cells, so each owns one chunk and
    concurrent writes of different regions never touch the same chunk. Pentagon regions have fewer
    cells; they are placed last, and writes that share a chunk are serialised by the store's lock.
    """

    regions: np.ndarray  # uint64, in row order
    offsets: np.ndarray  # int64, first row of each region
    counts: np.ndarray  # int64, cells in each region
    resolution: int
    region_res: int
    # Regions whose stencil keeps only some sub-regions: region -> the kept sub-regions (a stencil finer
    # than the regions). A chunk is then one sub-region (``slot``), so such regions stay chunk-aligned.
    kept: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, regions: np.ndarray, resolution: int, region_res: int,
              kept: Mapping[int, Sequence[int]] | None = None) -> ProductLayout:
        regions = np.asarray(regions, dtype=np.uint64)
        kept = {int(r): tuple(sorted(int(c) for c in subs)) for r, subs in (kept or {}).items()}
        pentagon = np.array([h3i.is_pentagon(int(r)) for r in regions], dtype=bool)
        order = np.concatenate([np.sort(regions[~pentagon]), np.sort(regions[pentagon])])
        counts = np.array([kept_cell_count(int(r), resolution, kept.get(int(r))) for r in order], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(order, offsets, counts, resolution, region_res, kept)

    @property
    def slot(self) -> int:
        """Rows (and chunk length) of a hexagon region, or with kept sub-regions of a hexagon sub-region
        (every region then holds whole chunks: its kept sub-regions')."""
        subs = next((subs for subs in self.kept.values() if subs), None)
        return 7 ** (self.resolution - (h3i.get_resolution(subs[0]) if subs else self.region_res))

    @property
    def n_rows(self) -> int:
        return int(self.counts.sum())

    def index_of(self, region: int) -> int:
        hits = np.nonzero(self.regions == np.uint64(region))[0]
        if not len(hits):
            raise KeyError(f"region {region_key(region)} is not part of this product's layout")
        return int(hits[0])

    def rows_of(self, region: int) -> slice:
        i = self.index_of(region)
        return slice(int(self.offsets[i]), int(self.offsets[i] + self.counts[i]))

    def shares_chunk(self, region: int) -> bool:
        """True if the region's rows share a chunk with another region (pentagon tail)."""
        rows = self.rows_of(region)
        return rows.start % self.slot != 0 or (rows.stop - rows.start) != self.slot

    def cells_of(self, region: int) -> np.ndarray:
        """The region's cells in row order."""
        return kept_cells(int(region), self.resolution, self.kept.get(int(region)))

    def all_cells(self) -> np.ndarray:
        return np.concatenate([self.cells_of(int(r)) for r in self.regions]) if len(
            self.regions
        ) else np.zeros(0, dtype=np.uint64)
