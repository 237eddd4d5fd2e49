"""What one tile x date partition computes: the scene's chips (datacube, thumbnails, chip table) and
their embeddings. Asset bodies call these; I/O comes in through the callables and paths they are given."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import pyarrow as pa
import rasterio
import xarray as xr
from pyproj import Transformer
from torch import nn

from geoembed.core.sinks.zarr import StorePath, open_store, staged_store, zarr_target
from geoembed.imagery.encoders import ChipInputs, LoadedEncoder, chip_metadata
from geoembed.core.grids.quadkey import MercatorTileGrid
from geoembed.imagery.chips import ALL_DATA, NO_DATA, NODATA_CLASSES, PARTIAL, ChipGrid, SceneChipper, rgb_thumbnail
from geoembed.imagery.scenes import Scene
from geoembed.imagery.stores import (
    ChipRecords, create_datacube, datacube_template, embeddings_dataset, write_datacube_block,
)


@dataclass
class ChippedScene:
    table: pa.Table  # every chip of the tile: its window, footprint, no-data class, cloud fraction...
    footprints: np.ndarray  # lon/lat polygons, parallel to the table
    datacube_chips: int  # chips in the datacube (those the scene overlaps)
    classes: dict[str, int]  # chips per no-data class
    seconds: float

    @property
    def chips_with_data(self) -> int:
        return self.classes["all_data"] + self.classes["partial"]


def chip_scene(
    scene: Scene,
    grid: ChipGrid | MercatorTileGrid,
    bands: list[str],
    open_band: Callable[[str], ContextManager[rasterio.DatasetReader]],
    datacube_path: StorePath,
    save_thumbnail: Callable[[str, bytes], str],
    attrs: dict,
    progress: Callable[[int, int, int], None] = lambda done, total, with_data: None,
    within: tuple[np.ndarray, np.ndarray] | None = None,
) -> ChippedScene:
    """Cut a scene into the grid's chips: write the datacube of the chips it overlaps (whole or not at
    all), a thumbnail of every chip with data (``save_thumbnail(chip_id, png)`` returns where it went),
    and record every chip, those without data included. ``within``: the (rows, cols) of the chips that
    make the partition (default: every chip of the MGRS tile)."""
    start = time.perf_counter()
    records = ChipRecords(grid, scene)
    universe = within if within is not None else grid.all_chips()
    with SceneChipper(scene, grid, bands, open_band) as chipper, staged_store(datacube_path) as target:
        rows, cols = chipper.chips()
        if within is not None:  # the scene's chips that belong to the partition
            keep = np.isin(rows.astype(np.int64) * grid.chips_per_side + cols,
                           within[0].astype(np.int64) * grid.chips_per_side + within[1])
            rows, cols = rows[keep], cols[keep]
        template, encoding = datacube_template(scene, grid, bands, rows, cols, attrs)
        create_datacube(target, template, encoding)
        index = 0
        for block in chipper.blocks(rows, cols):
            write_datacube_block(target, index, block)
            classes = block.nodata_class
            names = grid.chip_ids(np.full(len(block.cols), block.row), block.cols)
            thumbnails = [None if classes[i] == NO_DATA else save_thumbnail(
                str(names[i]), rgb_thumbnail(block.dn[i], block.valid[i], bands, scene.dn_offset, rgb=scene.rgb))
                for i in range(len(block.cols))]
            records.add(np.full(len(block.cols), block.row, np.int32), block.cols, block.nodata_fraction, classes,
                        block.cloud_fraction, np.arange(index, index + len(block.cols)), thumbnails)
            index += len(block.cols)
            progress(index, len(rows), sum(1 for t in thumbnails if t))
    # Chips of the tile (partition) the scene does not reach: no data, recorded all the same.
    all_rows, all_cols = universe
    outside = ~np.isin(all_rows.astype(np.int64) * grid.chips_per_side + all_cols,
                       rows.astype(np.int64) * grid.chips_per_side + cols)
    n_out = int(outside.sum())
    records.add(all_rows[outside], all_cols[outside], np.ones(n_out, np.float32), np.full(n_out, NO_DATA),
                np.full(n_out, np.nan, np.float32), np.full(n_out, -1), [None] * n_out)
    table, footprints = records.table()
    counts = np.bincount([NODATA_CLASSES.index(c) for c in table["nodata_class"].to_pylist()], minlength=3)
    classes = {name: int(counts[i]) for i, name in ((ALL_DATA, "all_data"), (PARTIAL, "partial"), (NO_DATA, "no_data"))}
    return ChippedScene(table, footprints, len(rows), classes, time.perf_counter() - start)


def chips_to_embed(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(datacube index, chip id, row, col) of the chips with data, in datacube order: no-data chips are
    skipped (and counted by the caller from the table)."""
    keep = np.array([c != "no_data" for c in table["nodata_class"].to_pylist()], dtype=bool)
    index = table["datacube_index"].to_numpy()[keep]
    order = np.argsort(index)
    return (index[order], np.asarray(table["chip_id"].to_pylist(), dtype=object)[keep][order],
            table["row"].to_numpy()[keep][order], table["col"].to_numpy()[keep][order])


def open_datacube(path: StorePath, raw: bool = False) -> xr.Dataset:
    """A datacube: reflectance (NaN = no data), or with ``raw`` the DNs as stored."""
    if raw:
        return xr.open_zarr(zarr_target(path), consolidated=False, chunks=None, mask_and_scale=False)
    return open_store(path, "chip datacube")


@dataclass
class ChipEmbeddings:
    """One tile x date's chip embeddings and what the checks count."""

    dataset: xr.Dataset
    chips: int  # chips embedded (those with data)
    skipped_no_data: int
    with_nan: int
    off_unit_norm: int | None  # None: the encoder's vectors are not normalised (Clay's class token)
    seconds: float


def embed_chips(
    table: pa.Table,
    datacube: xr.Dataset,
    encoder: LoadedEncoder,
    infer: Callable[[nn.Module, ChipInputs], tuple[np.ndarray, np.ndarray]],
    scene: Scene,
    attrs: dict,
) -> ChipEmbeddings:
    """Every chip with data through the encoder (no-data chips are skipped and counted); the class-level
    vectors, the patch-level ones when the encoder keeps them, and the model and scene versions per chip."""
    start = time.perf_counter()
    index, ids, rows, cols = chips_to_embed(table)
    skipped = table.num_rows - len(index)
    reflectance = datacube["reflectance"].sel(band=encoder.bands)
    grid_bounds = np.column_stack([table[c].to_numpy() for c in ("xmin", "ymin", "xmax", "ymax")])
    positions = {int(i): k for k, i in enumerate(table["datacube_index"].to_numpy()) if i >= 0}
    centres = grid_bounds[[positions[int(i)] for i in index]] if len(index) else np.zeros((0, 4))
    lon, lat = _to_lonlat(str(table["crs"][0]) if table.num_rows else "EPSG:4326").transform(
        (centres[:, 0] + centres[:, 2]) / 2, (centres[:, 1] + centres[:, 3]) / 2)
    when, where = chip_metadata(scene.acquired, np.asarray(lat), np.asarray(lon))
    inputs = ChipInputs(lambda chosen: reflectance.isel(chip=chosen).values, index, encoder, when, where)
    if len(index):
        cls, patches = infer(encoder.model, inputs)
    else:
        cls = np.zeros((0, encoder.embedding_dim), np.float32)
        patches = np.zeros((0, 0, encoder.patch_dim), np.float32)
    kept = patches if encoder.keep_patches else None
    norms = np.linalg.norm(cls, axis=1)
    dataset = embeddings_dataset(ids, rows, cols, cls, kept, encoder.version, scene.version,
                                 {**attrs, "encoder": json.dumps(encoder.description), "bands": encoder.bands,
                                  "tile": scene.tile, "date": scene.date, "scene_id": scene.scene_id,
                                  "embedding": json.dumps({"dim": encoder.embedding_dim, "dtype": "float32",
                                                           "normalisation": "L2 (unit norm)" if encoder.kind == "geoembed"
                                                           else "none (Clay's class token)", "quantisation": "none"})})
    return ChipEmbeddings(dataset, len(index), skipped, int(np.isnan(cls).any(axis=1).sum()),
                          int((np.abs(norms - 1) > 1e-3).sum()) if encoder.kind == "geoembed" else None,
                          time.perf_counter() - start)


def _to_lonlat(crs: str):
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
