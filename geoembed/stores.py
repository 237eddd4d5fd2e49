"""Zarr formats: per-region land-cover samples and the H3-indexed embedding product.

The product store is one Zarr v3 group that ``xr.open_zarr`` opens for the whole product and
xdggs decodes (``cell_ids`` carries exactly ``{"grid_name": "h3", "level": res}``). Each region
owns chunk-aligned rows (see ``ProductLayout``), so partitions are written with xarray region
writes that never touch each other's chunks; the few that share a chunk take the store's lock.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import hashlib
import tempfile

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr
from filelock import FileLock
from zarr.storage import FsspecStore

from geoembed.grid import ProductLayout
from geoembed.sampling import EMBEDDED, STATUSES, Legend, WindowSamples

NOT_COMPUTED = 255
# Versions (model and source) are 16-hex-digit content hashes: stored per row as the uint64 they spell
# (0 = none). Fixed-width UTF-32 has no Zarr v3 spec, and variable-length strings read ~40x slower.
VERSION_DTYPE = "u8"
VERSION_ENCODING = "uint64 whose 16-digit lower-case hex form is the version; 0 = none"


def encode_version(version: str) -> int:
    if len(version) != 16:
        raise ValueError(f"version {version!r} is not a 16-hex-digit content hash")
    try:
        return int(version, 16)
    except ValueError:
        raise ValueError(f"version {version!r} is not a 16-hex-digit content hash") from None


def decode_version(value: int) -> str:
    return f"{int(value):016x}" if int(value) else ""


def h3_coordinate(cells: np.ndarray, resolution: int) -> tuple:
    # xdggs rejects any other attribute on this coordinate.
    return ("cells", np.asarray(cells, dtype=np.uint64), {"grid_name": "h3", "level": int(resolution)})


# A store is a local path or an fsspec URL (s3://bucket/prefix/x.zarr; credentials and endpoint from
# the environment, e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL). Local writes swap directories atomically;
# an object store has no rename, so there a store is written in place.
StorePath = str | os.PathLike[str]  # a local path, or a URL (str or universal_pathlib's UPath)


def is_remote(path: StorePath) -> bool:
    return "://" in str(path)


def storage_options(url: StorePath) -> dict:
    """fsspec options for a URL. The S3 endpoint is passed explicitly (not only left to botocore's
    environment lookup) because fsspec caches filesystems by their options: a process that changes
    AWS_ENDPOINT_URL must get a new one."""
    options = dict(getattr(url, "storage_options", {}) or {})
    if str(url).startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        options.setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
    return options


def _fs(url: StorePath) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(url), **storage_options(url))


def zarr_target(path: StorePath) -> "Path | FsspecStore":
    """What xarray/zarr open: the local path, or an fsspec store for a URL."""
    if is_remote(path):
        return FsspecStore.from_url(str(path), storage_options=storage_options(path))
    return Path(path)


def store_exists(path: StorePath) -> bool:
    if is_remote(path):
        fs, root = _fs(path)
        return fs.exists(f"{root.rstrip('/')}/zarr.json")
    return Path(path).exists()


@contextmanager
def store_lock(path: StorePath) -> Iterator[None]:
    """An exclusive lock for read-modify-write steps on a store (attributes, shared chunks). Beside a
    local store; for an object store, on this machine (several writers on several machines each write
    their own regions' chunks, which never overlap, but attributes are last-writer-wins)."""
    if is_remote(path):
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        lock_path = Path(tempfile.gettempdir()) / "geoembed-locks" / f"{digest}.lock"
    else:
        lock_path = Path(f"{os.fspath(path).rstrip('/')}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        yield


def replace_directory(tmp: StorePath, final: StorePath) -> None:
    """Swap a freshly written directory into place; the old one is kept until the new one is there.
    (Object stores have no rename: the new objects are copied over the old ones, then the leftovers
    deleted; a reader in between may see a mix, which only a stencil change causes.)"""
    if is_remote(final):
        fs, final_key = _fs(final)
        _, tmp_key = _fs(tmp)
        new = fs.find(tmp_key)  # objects only (no pseudo-directories)
        targets = [final_key + key[len(tmp_key):] for key in new]
        stale = sorted(set(fs.find(final_key)) - set(targets))
        if new:
            fs.copy(new, targets)  # new objects over the old ones first,
        if stale:
            fs.rm(stale)  # then the old objects the new store does not have,
        if new:
            fs.rm(new)  # then the temporary copy.
        return
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _sibling(path: StorePath, name: str) -> StorePath:
    if is_remote(path):
        return f"{str(path).rstrip('/').rsplit('/', 1)[0]}/{name}"
    return Path(path).with_name(name)


def _name(path: StorePath) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


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
    if is_remote(path):
        ds.to_zarr(zarr_target(path), mode="w", zarr_format=3, consolidated=False)
        return
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    replace_directory(tmp, final)


def open_samples(path: StorePath) -> xr.Dataset:
    """A region's samples, lazily indexed without dask (small reads stay cheap)."""
    if not store_exists(path):
        raise FileNotFoundError(f"samples store {str(path)!r} does not exist; materialize the samples first")
    return xr.open_zarr(zarr_target(path), consolidated=False, chunks=None)


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
        tmp = _sibling(final, f".{_name(final)}.tmp-{uuid.uuid4().hex[:8]}")
        _template(layout, dim, attrs).to_zarr(zarr_target(tmp), compute=False, mode="w", zarr_format=3,
                                              consolidated=False, encoding=_ENCODING)
        if previous is not None and previous.sizes.get("embedding_dim") == dim and same_grid:
            _carry_over(previous, tmp, layout)
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
        for key, values in (("model_versions", [model_version]), ("source_versions", sources)):
            seen = list(group.attrs.get(key, []))
            new = [v for v in values if v not in seen]
            if new:
                group.attrs[key] = seen + new


def open_product(path: StorePath, chunks: dict | str | None = None) -> xr.Dataset:
    """The product store. Without ``chunks`` it is lazily indexed without dask: reading one region's
    rows reads just its chunks (users' ``xr.open_zarr`` gets dask arrays, as usual)."""
    if not store_exists(path):
        raise FileNotFoundError(f"embedding store {str(path)!r} does not exist; materialize the regions first")
    return xr.open_zarr(zarr_target(path), consolidated=False, chunks=chunks)
