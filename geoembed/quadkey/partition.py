"""What one coarse-quadkey partition computes: the chips of every scene covering it (datacubes, thumbnails),
its no-data index, and its chips' labels. Asset bodies call these; I/O comes in through the callables and
paths they are given."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import pyarrow as pa
import rasterio

from geoembed.core.render import polygons_map_png
from geoembed.core.sinks.zarr import StorePath
from geoembed.imagery.chips import NODATA_CLASSES
from geoembed.imagery.partition import chip_scene
from geoembed.imagery.scenes import Scene
from geoembed.quadkey.labels import LabelPolygons, chip_label_shares
from geoembed.quadkey.plan import QuadkeyPlan

NODATA_COLOURS = {"all_data": "#2ca02c", "partial": "#ff7f0e", "no_data": "#7f7f7f"}


@dataclass
class ChippedPartition:
    """A partition's no-data index: one row per chip and scene (those without data included)."""

    table: pa.Table
    footprints: np.ndarray  # lon/lat polygons, parallel to the table
    datacube_chips: int
    seconds: float

    @property
    def classes(self) -> dict[str, int]:
        values = self.table["nodata_class"].to_pylist()
        return {name: values.count(name) for name in NODATA_CLASSES}


def chip_partition(
    partition: str,
    plan: QuadkeyPlan,
    scenes: dict[str, Scene],
    bands: list[str],
    open_band: Callable[[str], ContextManager[rasterio.DatasetReader]],
    datacube_path: Callable[[str], StorePath],
    save_thumbnail: Callable[[str, str, bytes], str],
    attrs: dict,
) -> ChippedPartition:
    """Every scene covering the partition cut into its tiles: a datacube per scene (the tiles it reaches),
    a thumbnail per chip with data (``save_thumbnail(scene_key, quadkey, png)``), and the no-data index
    of all the partition's tiles for each scene."""
    start = time.perf_counter()
    grid = plan.grid
    within = grid.tiles_under(partition)
    tables, footprints, in_cubes = [], [], 0
    for key in plan.partitions[partition]:
        result = chip_scene(scenes[key], grid, bands, open_band, datacube_path(key),
                            lambda quadkey, png, key=key: save_thumbnail(key, quadkey, png),
                            {**attrs, "partition": partition}, within=within)
        tables.append(result.table)
        footprints.append(result.footprints)
        in_cubes += result.datacube_chips
    table = pa.concat_tables(tables) if tables else pa.table({})
    return ChippedPartition(table, np.concatenate(footprints) if footprints else np.zeros(0, object), in_cubes,
                            time.perf_counter() - start)


def nodata_map_png(partition: ChippedPartition, title: str) -> bytes:
    """The no-data index as a map: each chip's footprint coloured by its class (newest scene on top)."""
    rings = [np.asarray(polygon.exterior.coords) for polygon in partition.footprints]
    colours = [NODATA_COLOURS[c] for c in partition.table["nodata_class"].to_pylist()]
    return polygons_map_png(rings, colours, title, width_px=700, legend=NODATA_COLOURS, edges="white")


def label_table(index: pa.Table, labels: LabelPolygons, min_share: float) -> pa.Table:
    """Every chip with data of a no-data index, with the share of it each class covers (``share_<class>``)
    and its labels (the classes covering at least ``min_share``)."""
    keep = np.array([c != "no_data" for c in index["nodata_class"].to_pylist()], dtype=bool)
    rows = index.filter(pa.array(keep))
    bounds = np.column_stack([rows[c].to_numpy() for c in ("xmin", "ymin", "xmax", "ymax")]) if len(rows) else \
        np.zeros((0, 4))
    shares = chip_label_shares(labels, bounds)
    names = list(labels.classes)
    return pa.table({
        "chip_id": rows["chip_id"], "scene_id": rows["scene_id"], "date": rows["date"],
        "nodata_class": rows["nodata_class"],
        **{f"share_{name}": pa.array(shares[:, k], pa.float32()) for k, name in enumerate(names)},
        "labels": pa.array([[names[k] for k in np.nonzero(row >= min_share)[0]] for row in shares],
                           pa.list_(pa.string())),
    })


def share_matrix(table: pa.Table) -> np.ndarray:
    """(chips, classes) shares of a label table's ``share_<class>`` columns."""
    columns = [c for c in table.column_names if c.startswith("share_")]
    if not columns:
        return np.zeros((table.num_rows, 0), dtype=np.float32)
    return np.column_stack([table[c].to_numpy() for c in columns])
