"""Which web-mercator tiles a quadkey product's scenes cover, at which zoom, grouped into coarse-quadkey
partitions."""

from __future__ import annotations

from typing import Callable, ContextManager

import mercantile
import numpy as np
import rasterio
from pydantic import BaseModel

from geoembed.core.grids.quadkey import MercatorTileGrid, zoom_for_resolution
from geoembed.imagery.chips import SceneChipper
from geoembed.imagery.scenes import Scene

MAX_PARTITION_LEVELS = 8  # a partition holds at most 4^8 = 65,536 chips
MIN_PARTITIONS = 10
MIN_CHIPS_PER_PARTITION = 4  # a small product gets fewer partitions rather than one chip each


class QuadkeyPlan(BaseModel):
    """The chip zoom, the partition zoom, and for every partition (a coarse quadkey) the scenes covering
    it ("tile|date") and how many of its tiles they reach."""

    zoom: int
    partition_zoom: int
    chip_size: int
    partitions: dict[str, list[str]]
    chips: dict[str, int]

    @property
    def grid(self) -> MercatorTileGrid:
        return MercatorTileGrid(self.zoom, self.chip_size)


def scene_key(scene: Scene) -> str:
    return f"{scene.tile}|{scene.date}"


def choose_partition_zoom(rows: np.ndarray, cols: np.ndarray, zoom: int, wanted: int = MIN_PARTITIONS) -> int:
    """The coarsest zoom (at most MAX_PARTITION_LEVELS above ``zoom``) whose tiles split the chips into at
    least ``wanted`` partitions; a small product, into at least one partition per MIN_CHIPS_PER_PARTITION chips."""
    chips = np.unique(np.asarray(rows, np.int64) * 2 ** zoom + np.asarray(cols, np.int64))
    target = max(1, min(wanted, len(chips) // MIN_CHIPS_PER_PARTITION))
    for level in range(max(0, zoom - MAX_PARTITION_LEVELS), zoom + 1):
        shift = zoom - level
        parents = np.unique((np.asarray(rows, np.int64) >> shift) * 2 ** level + (np.asarray(cols, np.int64) >> shift))
        if len(parents) >= target:
            return level
    return zoom


def plan_partitions(scenes: list[Scene], bands: list[str], chip_size: int, zoom: int | None,
                    partition_zoom: int | None,
                    open_band: Callable[[str], ContextManager[rasterio.DatasetReader]]) -> QuadkeyPlan:
    """Read each scene's band headers (not its pixels) for where it lies; choose the chip zoom (configured,
    or nearest the finest band's ground resolution at the scenes' latitude) and the partition zoom."""
    extents, resolutions = [], []
    for scene in scenes:
        with SceneChipper(scene, MercatorTileGrid(0, chip_size), bands, open_band) as chipper:
            extents.append(chipper.extent)
            resolutions.append(min(b.resolution for b in chipper.band_files.values()))
    if zoom is None:
        ys = [(e[1] + e[3]) / 2 for e in extents] or [0.0]
        latitude = mercantile.lnglat(0.0, float(np.median(ys))).lat
        zoom = zoom_for_resolution(min(resolutions, default=10.0), latitude, chip_size)
    grid = MercatorTileGrid(zoom, chip_size)
    covered = [grid.chips_overlapping(extent) for extent in extents]
    all_rows = np.concatenate([r for r, _ in covered]) if covered else np.zeros(0, np.int32)
    all_cols = np.concatenate([c for _, c in covered]) if covered else np.zeros(0, np.int32)
    if partition_zoom is None:
        partition_zoom = choose_partition_zoom(all_rows, all_cols, zoom)
    partitions: dict[str, list[str]] = {}
    chips: dict[str, set[str]] = {}
    for scene, (rows, cols) in zip(scenes, covered):
        for quadkey in grid.quadkeys(rows, cols):
            parent = str(quadkey)[:partition_zoom]
            partitions.setdefault(parent, [])
            if scene_key(scene) not in partitions[parent]:
                partitions[parent].append(scene_key(scene))
            chips.setdefault(parent, set()).add(str(quadkey))
    ordered = sorted(partitions)
    return QuadkeyPlan(zoom=zoom, partition_zoom=partition_zoom, chip_size=chip_size,
                       partitions={k: sorted(partitions[k]) for k in ordered},
                       chips={k: len(chips[k]) for k in ordered})
