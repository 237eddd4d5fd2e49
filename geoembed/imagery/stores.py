"""Formats of the imagery product: the chip datacube (Zarr, one store per tile x date), the chip table
(GeoParquet, one per tile x date), and the chip embeddings (Zarr, one store per tile x date and model).

Datacube: ``reflectance (chip, band, y, x)``, stored as Sentinel-2 DNs (uint16, 0 = no data) with CF
``scale_factor``/``add_offset``, so ``xr.open_zarr`` returns reflectance (NaN where no data) and
``mask_and_scale=False`` the DNs. Each chip is one chunk; its coordinates are ``easting (chip, x)`` and
``northing (chip, y)`` (pixel centres, tile CRS in the ``crs`` attribute).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import pyarrow as pa
import xarray as xr
import zarr

from geoembed.core.geometry import boxes_lonlat
from geoembed.core.lineage import VERSION_DTYPE, VERSION_ENCODING, encode_version
from geoembed.core.sinks.geoparquet import total_bounds, wkb_column
from geoembed.core.sinks.zarr import StorePath, consolidate, zarr_target
from geoembed.core.grids.quadkey import MercatorTileGrid
from geoembed.imagery.chips import NODATA_CLASSES, NODATA_DN, ChipBlock, ChipGrid, band_wavelengths
from geoembed.imagery.scenes import Scene

# ---------------------------------------------------------------------------------------------
# Datacube
# ---------------------------------------------------------------------------------------------


LONG_NAMES = {"L1C": "top-of-atmosphere reflectance", "L2A": "surface reflectance"}


def datacube_template(scene: Scene, grid: ChipGrid | MercatorTileGrid, bands: list[str], rows: np.ndarray, cols: np.ndarray,
                      attrs: dict) -> tuple[xr.Dataset, dict]:
    """The empty datacube of a scene's chips (``rows``, ``cols`` row-major) and its encoding."""
    n, s, nb = len(rows), grid.chip_size, len(bands)
    bounds = grid.chip_bounds(rows, cols)
    offsets = (np.arange(s) + 0.5) * grid.resolution
    variables = {"reflectance": (("chip", "band", "y", "x"),
                                 da.full((n, nb, s, s), np.nan, dtype="f4", chunks=(1, nb, s, s)),
                                 {"long_name": LONG_NAMES.get(scene.level, "reflectance"), "units": "1"})}
    if scene.has_cloud_mask:
        variables["scene_classification"] = (("chip", "y", "x"), da.zeros((n, s, s), dtype="u1", chunks=(1, s, s)),
                                             {"long_name": "Sentinel-2 L2A scene classification (SCL)"})
    ds = xr.Dataset(
        variables,
        coords={
            "chip_id": ("chip", grid.chip_ids(rows, cols)),
            "row": ("chip", rows.astype(np.int32)),
            "col": ("chip", cols.astype(np.int32)),
            "band": ("band", np.array(bands, dtype=object)),
            "wavelength": ("band", band_wavelengths(bands), {"units": "micrometre"}),
            "easting": (("chip", "x"), bounds[:, 0:1] + offsets[None, :], {"units": "m"}),
            "northing": (("chip", "y"), bounds[:, 3:4] - offsets[None, :], {"units": "m"}),
        },
        attrs={
            **attrs,
            "tile": grid.name,
            "date": scene.date,
            "acquired": scene.acquired.isoformat(),
            "scene_id": scene.scene_id,
            "product_level": scene.level,
            "processing_baseline": scene.processing_baseline or "",
            "crs": grid.crs,
            "resolution": grid.resolution,
            "chip_size": s,
            "chip_grid": grid.describe(),
            "resampling": f"bilinear to {grid.resolution:.4g} m (reflectance), nearest (scene classification)",
            "dn_scaling": f"reflectance = (DN + {scene.dn_offset}) / 10000; DN 0 = no data" + (
                "" if scene.radiometry is None else
                f" (DN = 10000 x (stored x {scene.radiometry[0]:g} + {scene.radiometry[1]:g}), from band numbers "
                f"{json.dumps(scene.band_index)} of the raster)"),
            "source_urls": json.dumps(scene.bands),
        },
    )
    encoding = {"reflectance": {"dtype": "uint16", "scale_factor": 1e-4, "add_offset": scene.dn_offset * 1e-4,
                                "_FillValue": NODATA_DN, "chunks": (1, nb, s, s)}}
    return ds, encoding


def create_datacube(target: StorePath, template: xr.Dataset, encoding: dict) -> None:
    """The datacube's arrays, empty; chunk writes change no metadata, so it is consolidated now."""
    template.to_zarr(zarr_target(target), mode="w", compute=False, zarr_format=3, consolidated=False,
                     encoding=encoding)
    consolidate(target)


def write_datacube_block(target: StorePath, first_chip: int, block: ChipBlock) -> None:
    """A row of chips, written as stored (DNs), at datacube positions first_chip, first_chip + 1, ..."""
    group = zarr.open_group(zarr_target(target), mode="r+")
    stop = first_chip + len(block.cols)
    group["reflectance"][first_chip:stop] = np.where(block.valid[:, None], block.dn, NODATA_DN)
    if block.mask is not None and "scene_classification" in group:
        group["scene_classification"][first_chip:stop] = block.mask


# ---------------------------------------------------------------------------------------------
# Chip table
# ---------------------------------------------------------------------------------------------


@dataclass
class ChipRecords:
    """Rows of the chip table, gathered chip row by chip row."""

    grid: ChipGrid | MercatorTileGrid
    scene: Scene
    columns: dict[str, list] = field(default_factory=dict)

    def add(self, rows: np.ndarray, cols: np.ndarray, nodata_fraction: np.ndarray, nodata_class: np.ndarray,
            cloud_fraction: np.ndarray, datacube_index: np.ndarray, thumbnails: list[str | None]) -> None:
        s = self.grid.chip_size
        values = {
            "chip_id": self.grid.chip_ids(rows, cols).tolist(), "row": rows.tolist(), "col": cols.tolist(),
            "x_off": (cols * s).tolist(), "y_off": (rows * s).tolist(), "width": [s] * len(rows),
            "height": [s] * len(rows), "nodata_fraction": np.asarray(nodata_fraction, np.float32).tolist(),
            "nodata_class": [NODATA_CLASSES[int(c)] for c in nodata_class],
            "cloud_fraction": [None if np.isnan(v) else float(v) for v in cloud_fraction],
            "datacube_index": np.asarray(datacube_index, np.int32).tolist(), "thumbnail": list(thumbnails),
        }
        for key, value in values.items():
            self.columns.setdefault(key, []).extend(value)

    def table(self) -> tuple[pa.Table, np.ndarray]:
        """The chip table (GeoParquet columns) and its lon/lat footprints."""
        c = self.columns
        rows, cols = np.asarray(c.get("row", []), np.int32), np.asarray(c.get("col", []), np.int32)
        order = np.lexsort((cols, rows))
        bounds = self.grid.chip_bounds(rows[order], cols[order])
        footprints = boxes_lonlat(bounds, self.grid.crs)
        n = len(order)
        scene = self.scene
        table = pa.table({
            "tile": pa.array([self.grid.name] * n, pa.string()),
            "date": pa.array([scene.acquired.date()] * n, pa.date32()),
            **{k: pa.array([c[k][i] for i in order], t) for k, t in (
                ("chip_id", pa.string()), ("row", pa.int32()), ("col", pa.int32()), ("x_off", pa.int32()),
                ("y_off", pa.int32()), ("width", pa.int32()), ("height", pa.int32()))},
            "xmin": bounds[:, 0], "ymin": bounds[:, 1], "xmax": bounds[:, 2], "ymax": bounds[:, 3],
            "crs": pa.array([self.grid.crs] * n, pa.string()),
            **{k: pa.array([c[k][i] for i in order], t) for k, t in (
                ("nodata_fraction", pa.float32()), ("nodata_class", pa.string()), ("cloud_fraction", pa.float32()),
                ("datacube_index", pa.int32()), ("thumbnail", pa.string()))},
            "source_urls": pa.array([sorted(scene.bands.values())] * n, pa.list_(pa.string())),
            "scene_id": pa.array([scene.scene_id] * n, pa.string()),
            "scene_version": pa.array([scene.version] * n, pa.string()),
            "geometry": wkb_column(footprints),
        })
        return table, footprints


def chip_table_metadata(scene: Scene, has_cloud_mask: bool) -> dict[str, str]:
    return {
        "geoembed:scene_id": scene.scene_id,
        "geoembed:scene_version": scene.version,
        "geoembed:cloud_fraction": "from the L2A scene classification (classes 3, 8, 9, 10)" if has_cloud_mask
        else "not available: the scene has no cloud mask (L1C); cloud_fraction is null",
    }


# ---------------------------------------------------------------------------------------------
# Chip embeddings
# ---------------------------------------------------------------------------------------------


def embeddings_dataset(chip_id: np.ndarray, rows: np.ndarray, cols: np.ndarray, embedding: np.ndarray,
                       patches: np.ndarray | None, model_version: str, scene_version: str, attrs: dict) -> xr.Dataset:
    """One tile x date's chip embeddings (class-level, and patch-level when kept) with lineage per chip."""
    n = len(chip_id)
    variables = {
        "embedding": (("chip", "embedding_dim"), embedding.astype(np.float32)),
        "model_version": (("chip",), np.full(n, encode_version(model_version), dtype=VERSION_DTYPE),
                          {"encoding_of_versions": VERSION_ENCODING}),
        "scene_version": (("chip",), np.full(n, encode_version(scene_version), dtype=VERSION_DTYPE),
                          {"encoding_of_versions": VERSION_ENCODING}),
    }
    if patches is not None:
        variables["patch_embedding"] = (("chip", "patch", "patch_dim"), patches.astype(np.float32))
    return xr.Dataset(variables, coords={"chip_id": ("chip", np.asarray(chip_id, dtype=object)),
                                         "row": ("chip", np.asarray(rows, np.int32)),
                                         "col": ("chip", np.asarray(cols, np.int32))},
                      attrs={**attrs, "model_version": model_version, "scene_version": scene_version,
                             "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})


__all__ = ["ChipRecords", "chip_table_metadata", "create_datacube", "datacube_template", "embeddings_dataset",
           "total_bounds", "write_datacube_block"]
