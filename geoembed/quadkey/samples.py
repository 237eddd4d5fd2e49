"""Training samples for the chip classifier and its backbone, from a partition's datacubes.

A 256 px chip holds too few labelled examples on a product of a few scenes, so the classifier trains on
sub-tiles: each chip split into ``split`` x ``split`` squares (the quadkeys ``log2(split)`` zooms finer),
each labelled from the polygons over its own footprint. Validation holds out whole partitions (coarse
quadkeys), so no validation sample touches a training one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from geoembed.core.grids.quadkey import MercatorTileGrid
from geoembed.quadkey.labels import LabelPolygons, chip_label_shares

MIN_VALID_SHARE = 0.5  # a sub-tile with less valid imagery is not a sample
SUBTILE_PIXELS = 64  # default sub-tile edge: chips of 256 px train as 4 x 4 sub-tiles, chips of 64 px whole


@dataclass
class SubtileSamples:
    reflectance: np.ndarray  # (n, bands, S/split, S/split) float32, NaN = no data
    shares: np.ndarray  # (n, classes)
    partition: np.ndarray  # (n,) the coarse quadkey of each sample (its spatial group)


def chip_reflectance(cube: xr.Dataset, bands: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reflectance (n, bands, S, S), rows, cols) of a datacube's chips."""
    return (cube["reflectance"].sel(band=bands).values.astype(np.float32), cube["row"].values.astype(np.int64),
            cube["col"].values.astype(np.int64))


def subtile_samples(cube: xr.Dataset, partition: str, grid: MercatorTileGrid, bands: list[str],
                    labels: LabelPolygons, split: int = 4) -> SubtileSamples:
    """The sub-tiles with enough valid imagery of a datacube's chips, with the class shares of each."""
    reflectance, rows, cols = chip_reflectance(cube, bands)
    n, b, s, _ = reflectance.shape
    if s % split:
        raise ValueError(f"chips of {s} px do not split into {split} x {split} sub-tiles")
    t = s // split
    # (n, b, split, t, split, t) -> (n, split, split, b, t, t): sub-tile (i, j) of chip k
    parts = reflectance.reshape(n, b, split, t, split, t).transpose(0, 2, 4, 1, 3, 5).reshape(-1, b, t, t)
    bounds = grid.chip_bounds(rows, cols)  # (n, 4)
    step = (bounds[:, 2] - bounds[:, 0]) / split
    i, j = np.meshgrid(np.arange(split), np.arange(split), indexing="ij")
    i, j = i.ravel(), j.ravel()
    xmin = (bounds[:, 0:1] + j[None, :] * step[:, None]).ravel()
    ymax = (bounds[:, 3:4] - i[None, :] * step[:, None]).ravel()
    step_all = np.repeat(step, split * split)
    sub_bounds = np.column_stack([xmin, ymax - step_all, xmin + step_all, ymax])
    valid = np.isfinite(parts).all(axis=1).reshape(len(parts), -1).mean(axis=1) >= MIN_VALID_SHARE
    shares = chip_label_shares(labels, sub_bounds[valid])
    return SubtileSamples(parts[valid], shares, np.full(int(valid.sum()), partition, dtype=object))


def concatenate(parts: list[SubtileSamples], classes: int, size: int, bands: int) -> SubtileSamples:
    if not parts:
        return SubtileSamples(np.zeros((0, bands, size, size), np.float32), np.zeros((0, classes), np.float32),
                              np.zeros(0, dtype=object))
    return SubtileSamples(np.concatenate([p.reflectance for p in parts]), np.concatenate([p.shares for p in parts]),
                          np.concatenate([p.partition for p in parts]))


def datacubes_of(plan_partitions: dict[str, list[str]], datacube_path, exists) -> list[tuple[str, str, object]]:
    """(partition, scene key, path) of every datacube written so far."""
    found = []
    for partition, scenes in plan_partitions.items():
        for scene in scenes:
            path = datacube_path(partition, scene)
            if exists(path):
                found.append((partition, scene, path))
    return found


def chips_with_data(cube: xr.Dataset, bands: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reflectance, rows, cols) of a datacube's chips that hold some valid pixel."""
    reflectance, rows, cols = chip_reflectance(cube, bands)
    keep = np.isfinite(reflectance).all(axis=1).reshape(len(reflectance), -1).any(axis=1)
    return reflectance[keep], rows[keep], cols[keep]
