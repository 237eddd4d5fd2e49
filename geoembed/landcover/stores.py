"""Zarr formats: per-region land-cover samples and the H3-indexed embedding product.

The product store is one Zarr v3 group that ``xr.open_zarr`` opens for the whole product and
xdggs decodes (``cell_ids`` carries exactly ``{"grid_name": "h3", "level": res}``). Each region
owns chunk-aligned rows (see ``ProductLayout``), so partitions are written with xarray region
writes that never touch each other's chunks; the few that share a chunk take the store's lock.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from geoembed.core.grids.h3 import ProductLayout
from geoembed.core.lineage import VERSION_DTYPE, VERSION_ENCODING, decode_version, encode_version
from geoembed.core.sinks.zarr import (
    StorePath, consolidate, h3_coordinate, is_remote, open_store, replace_directory, sibling, store_exists, store_lock,
    store_name, write_dataset, zarr_target,
)
from geoembed.landcover.windows import EMBEDDED, STATUSES, Legend, WindowSamples

NOT_COMPUTED = 255


# ---------------------------------------------------------------------------------------------
# Samples (one store per region partition)
# ---------------------------------------------------------------------------------------------


def samples_dataset(
    samples: WindowSamples, legend: Legend, resolution: int, attrs: dict, source_versions: list[str] | None = None
) -> xr.Dataset:
    """A region's samples. ``source_versions``: per cell, the content version of the file it was sampled
    from (default: ``attrs["source_version"]`` for every cell)."""
    n = len(samples.cells)
    per_cell = source_versions if source_versions is not None else [attrs["source_version"]] * n
    return xr.Dataset(
        {
            "windows": (("cells", "y", "x"), samples.windows),
            "source_version": (("cells",), np.array([encode_version(v) for v in per_cell], dtype=VERSION_DTYPE),
                               {"encoding": VERSION_ENCODING}),
            "fractions": (("cells", "class"), samples.fractions),
            "valid_fraction": (("cells",), samples.valid_fraction),
            "status": (("cells",), samples.status),
            "dominant_class": (("cells",), samples.dominant),
        },
        coords={
            "cell_ids": h3_coordinate(samples.cells, resolution),
            "class": ("class", legend.values),
            "class_name": ("class", np.array(legend.names, dtype=object)),
        },
        attrs={
            **attrs,
            "statuses": list(STATUSES),
            "embedded_statuses": [STATUSES[i] for i in EMBEDDED],
            "nodata_class_index": legend.nodata_index,
        },
    )


def write_samples(path: StorePath, ds: xr.Dataset) -> None:
    """Write a region's samples; a re-run replaces the previous store only once the new one is complete."""
    write_dataset(path, ds)


def open_samples(path: StorePath) -> xr.Dataset:
    """A region's samples, lazily indexed without dask (small reads stay cheap)."""
    return open_store(path, "samples store")


# ---------------------------------------------------------------------------------------------
# Embedding product (one store for the whole product)
# ---------------------------------------------------------------------------------------------


def _template(layout: ProductLayout, dim: int, attrs: dict) -> xr.Dataset:
    n, slot = layout.n_rows, layout.slot
    return xr.Dataset(
        {
            "embedding": (("cells", "embedding_dim"), da.full((n, dim), np.nan, dtype="f4", chunks=(slot, dim))),
            "status": (("cells",), da.full((n,), NOT_COMPUTED, dtype="u1", chunks=(slot,))),
            "model_version": (("cells",), da.zeros((n,), dtype=VERSION_DTYPE, chunks=(slot,)),
                              {"encoding_of_versions": VERSION_ENCODING}),
            "source_version": (("cells",), da.zeros((n,), dtype=VERSION_DTYPE, chunks=(slot,)),
                               {"encoding_of_versions": VERSION_ENCODING}),
        },
        coords={"cell_ids": h3_coordinate(layout.all_cells(), layout.resolution)},
        attrs={
            **attrs,
            "resolution": layout.resolution,
            "region_resolution": layout.region_res,
            "regions": [f"{int(r):x}" for r in layout.regions],
            "statuses": {**{str(i): s for i, s in enumerate(STATUSES)}, str(NOT_COMPUTED): "not_computed"},
            "embedded_statuses": [STATUSES[i] for i in EMBEDDED],
            "embedding": json.dumps(
                {"dim": dim, "dtype": "float32", "normalisation": "L2 (unit norm)", "quantisation": "none"}
            ),
            "model_versions": [],
            "source_versions": [],
        },
    )


_ENCODING = {
    "embedding": {"fill_value": np.nan},
    "status": {"fill_value": NOT_COMPUTED},
    "model_version": {"fill_value": 0},
    "source_version": {"fill_value": 0},
}


def ensure_product_store(path: StorePath, layout: ProductLayout, dim: int, attrs: dict) -> bool:
    """Create the product store for a layout, or migrate an existing one whose regions changed.

    Rows of regions present in both layouts are carried over, so nothing materialized is lost.
    Returns True if the store was (re)written."""
    final = path if is_remote(path) else Path(path)
    with store_lock(final):
        previous = None
        if store_exists(final):
            previous = xr.open_zarr(zarr_target(final), consolidated=False)
            same_regions = previous.attrs.get("regions") == [f"{int(r):x}" for r in layout.regions]
            same_grid = previous.attrs.get("resolution") == layout.resolution
            if same_regions and same_grid and previous.sizes.get("embedding_dim") == dim:
                return False
        tmp = sibling(final, f".{store_name(final)}.tmp-{uuid.uuid4().hex[:8]}")
        _template(layout, dim, attrs).to_zarr(zarr_target(tmp), compute=False, mode="w", zarr_format=3,
                                              consolidated=False, encoding=_ENCODING)
        if previous is not None and previous.sizes.get("embedding_dim") == dim and same_grid:
            _carry_over(previous, tmp, layout)
        consolidate(tmp)
        replace_directory(tmp, final)
        return True


def _carry_over(previous: xr.Dataset, new_path: StorePath, layout: ProductLayout) -> None:
    old_regions = [int(r, 16) for r in previous.attrs.get("regions", [])]
    old_layout = ProductLayout.build(np.array(old_regions, dtype=np.uint64), int(previous.attrs["resolution"]),
                                     int(previous.attrs["region_resolution"]))
    for region in set(old_regions) & {int(r) for r in layout.regions}:
        old_rows = old_layout.rows_of(region)
        part = previous[["embedding", "status", "model_version", "source_version"]].isel(cells=old_rows).load()
        part.drop_vars("cell_ids").to_zarr(zarr_target(new_path), region={"cells": layout.rows_of(region)},
                                           zarr_format=3, consolidated=False, safe_chunks=False)
    group = zarr.open_group(zarr_target(new_path), mode="r+")
    group.attrs.update({k: previous.attrs.get(k, []) for k in ("model_versions", "source_versions")})


def write_product_region(
    path: StorePath,
    layout: ProductLayout,
    region: int,
    embedding: np.ndarray,
    status: np.ndarray,
    model_version: str,
    source_version: str | np.ndarray,
) -> None:
    """Replace one region's rows (embeddings, statuses, lineage) in the product store.

    ``source_version``: one version for every row, or per row the encoded (uint64) version."""
    rows = layout.rows_of(region)
    n = rows.stop - rows.start
    if embedding.shape[0] != n or status.shape[0] != n:
        raise ValueError(f"region {region:x}: expected {n} rows, got {embedding.shape[0]} embeddings")
    if isinstance(source_version, str):
        source_rows = np.full(n, encode_version(source_version), dtype=VERSION_DTYPE)
    else:
        source_rows = np.asarray(source_version, dtype=VERSION_DTYPE)
    sources = sorted({decode_version(v) for v in np.unique(source_rows) if v})
    part = xr.Dataset(
        {
            "embedding": (("cells", "embedding_dim"), embedding.astype(np.float32)),
            "status": (("cells",), status.astype(np.uint8)),
            "model_version": (("cells",), np.full(n, encode_version(model_version), dtype=VERSION_DTYPE)),
            "source_version": (("cells",), source_rows),
        }
    )
    kwargs = dict(region={"cells": rows}, zarr_format=3, consolidated=False, safe_chunks=False)
    if layout.shares_chunk(region):
        with store_lock(path):
            part.to_zarr(zarr_target(path), **kwargs)
    else:
        part.to_zarr(zarr_target(path), **kwargs)
    with store_lock(path):
        group = zarr.open_group(zarr_target(path), mode="r+")
        changed = False
        for key, values in (("model_versions", [model_version]), ("source_versions", sources)):
            seen = list(group.attrs.get(key, []))
            new = [v for v in values if v not in seen]
            if new:
                group.attrs[key] = seen + new
                changed = True
        if changed:  # the consolidated metadata holds the attributes too
            consolidate(path)


def open_product(path: StorePath, chunks: dict | str | None = None) -> xr.Dataset:
    """The product store. Without ``chunks`` it is lazily indexed without dask: reading one region's
    rows reads just its chunks (users' ``xr.open_zarr`` gets dask arrays, as usual)."""
    return open_store(path, "embedding store", chunks)
