"""What one coarse-quadkey partition computes: the chips of every scene covering it (datacubes, thumbnails),
its no-data index, and its chips' labels. Asset bodies call these; I/O comes in through the callables and
paths they are given."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import h3.api.basic_int as h3i
import mercantile
import numpy as np
import pyarrow as pa
import rasterio
import shapely

from geoembed.core.grids.quadkey import chip_key, place_key, quadkey_footprints, tile_of_quadkey
from geoembed.core.render import polygons_map_png
from geoembed.core.sinks.pgvector import TableRows
from geoembed.core.sinks.zarr import StorePath
from geoembed.imagery.chips import NODATA_CLASSES
from geoembed.imagery.partition import chip_scene
from geoembed.imagery.scenes import Scene
from geoembed.imagery.search_rows import CHIP_H3_RESOLUTION
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


@dataclass
class ChipFeatures:
    """One scene's features in one partition, with what the table rows need about each chip."""

    scene: Scene
    chip_ids: np.ndarray  # quadkeys
    features: np.ndarray  # (n, dim)
    valid_share: np.ndarray  # (n,) 1 - no-data fraction


def feature_table_rows(partition: str, date: str, parts: list[ChipFeatures], model_version: str) -> TableRows:
    """The rows of one partition on one date for a CHIPS table: one row per quadkey (where two scenes of the
    date give the same tile, the one with more valid pixels), keyed by quadkey and date, with the footprint,
    the H3 cell of the centre (area filters) and the scene it came from."""
    best: dict[str, tuple[float, int, int]] = {}
    for p, part in enumerate(parts):
        for i, quadkey in enumerate(part.chip_ids):
            share = float(part.valid_share[i])
            if str(quadkey) not in best or share > best[str(quadkey)][0]:
                best[str(quadkey)] = (share, p, i)
    quadkeys = sorted(best)
    tiles = [tile_of_quadkey(q) for q in quadkeys]
    centres = [mercantile.ul(mercantile.Tile(2 * t.x + 1, 2 * t.y + 1, t.z + 1)) for t in tiles]  # the centre
    lon = np.array([c.lng for c in centres], dtype=np.float64)
    lat = np.array([c.lat for c in centres], dtype=np.float64)
    chosen = [best[q] for q in quadkeys]
    features = (np.stack([parts[p].features[i] for _, p, i in chosen]).astype(np.float32) if chosen
                else np.zeros((0, 0), np.float32))
    keys = np.array([chip_key(t, date) for t in tiles], dtype=np.int64)

    def geometry() -> list[bytes]:
        return [shapely.to_wkb(shapely.set_srid(f, 4326), include_srid=True) for f in quadkey_footprints(keys)]

    return TableRows(
        partition=chip_key(tile_of_quadkey(partition), date), keys=keys, lon=lon, lat=lat, embedding=features,
        model_version=model_version, source_version=[parts[p].scene.version for _, p, _ in chosen], geometry=geometry,
        extra={"h3": np.array([h3i.latlng_to_cell(y, x, CHIP_H3_RESOLUTION) for x, y in zip(lon, lat)],
                              dtype=np.uint64).astype(np.int64),
               "place": np.array([place_key(t) for t in tiles], dtype=np.int64),
               "tile": [parts[p].scene.tile for _, p, _ in chosen],
               "acquired": np.full(len(keys), np.datetime64(date, "D")), "chip_id": quadkeys})
