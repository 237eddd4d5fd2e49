"""Zarr formats: land-cover samples (per region, written a run at a time) and the H3-indexed embedding
product.

The product store is one Zarr v3 group in an icechunk repository (``geoembed.core.sinks.repository``):
``xr.open_zarr`` on a snapshot's store opens the whole product and xdggs decodes it (``cell_ids``
carries exactly ``{"grid_name": "h3", "level": res}``). Each region owns chunk-aligned rows (see
``ProductLayout``) and is written with an xarray region write committed as one snapshot; writers on
several machines at once conflict only at commit, and the one that lost redoes its write.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from geoembed.core.grids.h3 import ProductLayout
from geoembed.core.quantise import DEQUANTISATION, quantise_int8
from geoembed.core.lineage import VERSION_DTYPE, VERSION_ENCODING, decode_version, encode_version
from geoembed.core.sinks.repository import is_repository, snapshot_store, transact
from geoembed.core.sinks.zarr import (
    StorePath, h3_coordinate, is_remote, open_store, plain_store_exists, replace_directory, sibling, store_exists,
    store_name, write_dataset, zarr_target,
)
from geoembed.landcover.windows import EMBEDDED, STATUSES, Legend, StackedWindows, WindowSamples, cell_statuses

NOT_COMPUTED = 255


# ---------------------------------------------------------------------------------------------
# Samples (a run's regions in one store, a pointer file per region)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackedSamples:
    """A stacked source's windows for a region, with its content version and (categorical) legend."""

    windows: StackedWindows
    version: str
    legend: Legend | None = None


def samples_dataset(
    samples: WindowSamples, legend: Legend, resolution: int, attrs: dict, source_versions: list[str] | None = None,
    statuses: tuple[str, ...] = STATUSES, stacked: list[StackedSamples] = (),
) -> xr.Dataset:
    """A region's samples. ``source_versions``: per cell, the content version of the file it was sampled
    from (default: ``attrs["source_version"]`` for every cell). Each stacked source adds its windows
    (``windows_<name>`` class indices, or ``values_<name>`` measurements with NaN where invalid), its valid
    share, class fractions when categorical, and its version per cell in ``stacked_source_version``."""
    n = len(samples.cells)
    per_cell = source_versions if source_versions is not None else [attrs["source_version"]] * n
    ds = xr.Dataset(
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
            "statuses": list(statuses),
            "embedded_statuses": [STATUSES[i] for i in EMBEDDED],
            "nodata_class_index": legend.nodata_index,
        },
    )
    if not stacked:
        return ds
    described = []
    for source in stacked:
        w, name = source.windows, source.windows.name
        if w.kind == "categorical":
            ds[f"windows_{name}"] = (("cells", "y", "x"), w.values)
            ds[f"fractions_{name}"] = ((("cells", f"class_{name}")), w.fractions)
            ds.coords[f"class_{name}"] = (f"class_{name}", source.legend.values)
            described.append({"name": name, "kind": w.kind, "version": source.version,
                              "tokens": source.legend.n_classes + 1})
        else:
            ds[f"values_{name}"] = (("cells", "y", "x"), w.values)
            described.append({"name": name, "kind": w.kind, "version": source.version})
        ds[f"valid_fraction_{name}"] = (("cells",), w.valid_fraction)
    ds["stacked_source_version"] = (
        ("cells", "stacked_source"),
        np.repeat(np.array([[encode_version(s.version) for s in stacked]], dtype=VERSION_DTYPE), n, axis=0),
        {"encoding": VERSION_ENCODING})
    ds.coords["stacked_source"] = ("stacked_source", np.array([s.windows.name for s in stacked], dtype=object))
    ds.attrs["stacked_sources"] = json.dumps(described)
    return ds


def stacked_sources(ds: xr.Dataset) -> list[dict]:
    """The stacked sources a samples store holds, in product order ([] for a single-source product)."""
    return json.loads(ds.attrs.get("stacked_sources", "[]"))


def model_inputs(ds: xr.Dataset, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """What the encoder reads for the given cells: the primary class-index windows (n, S, S) uint8, or with
    stacked sources (n, C, S, S) float32 channels: primary class indices, each categorical stacked source's
    class indices, then each continuous source's raw values (NaN where invalid) in product order."""
    primary = ds["windows"].values[rows]
    sources = stacked_sources(ds)
    if not sources:
        return primary
    channels = [primary]
    channels += [ds[f"windows_{s['name']}"].values[rows] for s in sources if s["kind"] == "categorical"]
    channels += [ds[f"values_{s['name']}"].values[rows] for s in sources if s["kind"] == "continuous"]
    return np.stack([c.astype(np.float32) for c in channels], axis=1)


def write_samples(path: StorePath, ds: xr.Dataset) -> None:
    """Write a region's samples as a store of its own; a re-run replaces the previous store only once the
    new one is complete. (The samples asset writes a run's regions together: ``write_samples_batch``.)"""
    write_dataset(path, ds)


def open_samples(path: StorePath) -> xr.Dataset:
    """A region's samples from a store of its own, lazily indexed without dask (small reads stay cheap)."""
    return open_store(path, "samples store")


# A run's regions are written into one store (a store per region cost ~40 ms of file operations whatever
# its size: 20 s of the default product's 481 regions), with one manifest naming its regions and their rows.
# The newest manifest naming a region says where its samples are. (A pointer file per region, as before,
# cost 0.4 ms a region to create and rename: a third of the write.) A store no newest manifest names any
# more is removed once it is older than this (a store just written by a concurrent run is named a moment later).
UNREFERENCED_SAMPLES_GRACE_SECONDS = 600
SAMPLES_CHUNK_CELLS = 2048
# Per-cell scalars (ids, statuses, versions: 1 to 8 bytes a cell) in larger chunks: 2,048-cell chunks of them
# were files of 2-16 kB, and their number, not their bytes, set the write time (0.27 -> 0.14 s for the suite's
# 41,046 cells); a region's read decompresses at most two of these small chunks per array.
SAMPLES_CHUNK_CELLS_SCALARS = 16384


def _pointer(folder: Path, key: str) -> Path:
    """A region's pointer file, as versions before manifests wrote them (still read)."""
    return folder / "regions" / f"{key}.json"


def write_samples_batch(folder: str | Path, regions: dict[str, xr.Dataset]) -> Path:
    """Write several regions' samples as one store under ``<folder>/batches/``, then its manifest under
    ``<folder>/manifests/`` (written whole, then renamed into place: a reader sees the old samples of every
    region or the new ones). Stores whose regions all have newer samples are removed. Returns the store's path."""
    folder = Path(folder)
    keys = list(regions)
    parts = [regions[k] for k in keys]
    merged = concat_cells(parts)
    merged.attrs = {"regions": json.dumps(keys)}
    store = folder / "batches" / f"{uuid.uuid4().hex}.zarr"
    # Chunks of a few regions' rows: reading one region decompresses a little, not the whole batch.
    encoding = {name: {"chunks": tuple(min(size, SAMPLES_CHUNK_CELLS_SCALARS if var.ndim == 1 else SAMPLES_CHUNK_CELLS)
                                       if dim == "cells" else size for dim, size in zip(var.dims, var.shape))}
                for name, var in merged.variables.items() if "cells" in var.dims}
    write_dataset(store, merged, encoding)
    bounds = np.cumsum([0] + [part.sizes["cells"] for part in parts]).tolist()
    manifest = {"store": store.name, "regions": {key: {"start": start, "stop": stop, "attrs": part.attrs}
                                                 for key, part, start, stop in zip(keys, parts, bounds, bounds[1:])}}
    # Named by the time it was written (nanoseconds, zero-padded): the newest manifest sorts last.
    path = folder / "manifests" / f"{time.time_ns():020d}-{store.stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest))
    tmp.replace(path)
    for key in keys:  # a pointer left by an older version would name the region's previous samples
        _pointer(folder, key).unlink(missing_ok=True)
    _remove_unreferenced_samples(folder, keep=store.name)
    return store


def concat_cells(parts: list[xr.Dataset]) -> xr.Dataset:
    """Regions' samples (same variables) as one dataset along ``cells``: every variable on that dimension
    concatenated with numpy, the others (class legends) taken from the first. What ``xr.concat`` with
    minimal data_vars and coords gives, in a fifth of its time (9 ms instead of 46 ms for 120 regions:
    it aligns and copies every region's dataset)."""
    first = parts[0]

    def joined(name: str, var: xr.Variable) -> xr.Variable:
        if "cells" not in var.dims:
            return var
        data = np.concatenate([part.variables[name].values for part in parts], axis=var.dims.index("cells"))
        return xr.Variable(var.dims, data, var.attrs)

    return xr.Dataset({name: joined(name, var.variable) for name, var in first.data_vars.items()},
                      coords={name: joined(name, var.variable) for name, var in first.coords.items()})


@dataclass(frozen=True)
class _RegionRows:
    store: str
    start: int
    stop: int
    attrs: dict


_MANIFESTS: dict[str, dict] = {}  # manifest path -> content (manifests are never rewritten: read once)
# folder -> (the manifest names it was built from, the index): rebuilt only when the folder's manifests change,
# not on every region's lookup (a backfill of 2,562 regions looks each one up).
_INDEXES: dict[str, tuple[tuple[str, ...], dict]] = {}


def _region_index(folder: Path) -> dict[str, _RegionRows]:
    """Where every region's newest samples are, from the manifests (newest last, so newest wins)."""
    manifests = folder / "manifests"
    names = tuple(sorted(p for p in os.listdir(manifests) if p.endswith(".json") and not p.startswith("."))
                  if manifests.is_dir() else [])
    cached = _INDEXES.get(str(folder))
    if cached is not None and cached[0] == names:
        return cached[1]
    index: dict[str, _RegionRows] = {}
    for name in names:
        path = str(manifests / name)
        manifest = _MANIFESTS.get(path)
        if manifest is None:
            try:
                manifest = _MANIFESTS[path] = json.loads((manifests / name).read_text())
            except FileNotFoundError:  # removed by a concurrent clean-up: its regions are newer elsewhere
                continue
        for key, rows in manifest["regions"].items():
            index[key] = _RegionRows(manifest["store"], rows["start"], rows["stop"], rows["attrs"])
    _INDEXES[str(folder)] = (names, index)
    return index


def _remove_unreferenced_samples(folder: Path, keep: str) -> None:
    """Remove the stores (and their manifests) none of whose regions' newest samples they hold any more,
    once older than the grace period; stores of older versions (pointer files) are judged by their pointers."""
    batches = folder / "batches"
    if not batches.is_dir():
        return
    named = {rows.store for rows in _region_index(folder).values()}
    manifests = {p.name.split("-", 1)[1].removesuffix(".json"): p for p in (folder / "manifests").glob("*.json")}
    for store in batches.glob("*.zarr"):
        if store.name == keep or store.name in named or \
                time.time() - store.stat().st_mtime < UNREFERENCED_SAMPLES_GRACE_SECONDS:
            continue
        manifest = manifests.get(store.stem)
        if manifest is None and _named_by_a_pointer(folder, store):
            continue
        shutil.rmtree(store, ignore_errors=True)
        if manifest is not None:
            manifest.unlink(missing_ok=True)
            _MANIFESTS.pop(str(manifest), None)


def _named_by_a_pointer(folder: Path, store: Path) -> bool:
    """A store written by a version before manifests: whether a region's pointer file still names it (or it
    cannot be told: not one of ours, or being written)."""
    try:
        keys = json.loads(json.loads((store / "zarr.json").read_text())["attributes"]["regions"])
    except (OSError, KeyError, ValueError):
        return True
    for key in keys:
        try:
            if json.loads(_pointer(folder, key).read_text())["store"] == store.name:
                return True
        except (OSError, ValueError):
            continue
    return False


_OPENED_BATCHES: dict[str, xr.Dataset] = {}  # batch stores are never rewritten: opened once per process


def _region_rows(folder: Path, key: str) -> _RegionRows | None:
    rows = _region_index(folder).get(key)
    if rows is None and _pointer(folder, key).exists():  # written by a version before manifests
        where = json.loads(_pointer(folder, key).read_text())
        rows = _RegionRows(where["store"], where["start"], where["stop"], where["attrs"])
    return rows


def has_region_samples(folder: str | Path, key: str) -> bool:
    folder = Path(folder)
    return _region_rows(folder, key) is not None or store_exists(folder / f"{key}.zarr")


def open_region_samples(folder: str | Path, key: str) -> xr.Dataset:
    """A region's samples (its rows of the batch store its newest manifest names, with its own attributes),
    lazily indexed without dask; a region written by an older version as a store of its own is read as before."""
    folder = Path(folder)
    where = _region_rows(folder, key)
    if where is None:
        return open_samples(folder / f"{key}.zarr")
    path = folder / "batches" / where.store
    batch = _OPENED_BATCHES.get(str(path))
    if batch is None:
        batch = _OPENED_BATCHES[str(path)] = open_store(path, "samples store")
    region = batch.isel(cells=slice(where.start, where.stop))
    region.attrs = dict(where.attrs)
    return region


@dataclass(frozen=True)
class CellSample:
    """What the samples say of one cell: its status, dominant class, valid share and class fractions."""

    status: str
    dominant_class: str | None  # None: no valid pixel
    valid_fraction: float
    class_fractions: dict[str, float]  # the classes present, largest first
    source_version: str


def cell_sample(ds: xr.Dataset, cell: int) -> CellSample | None:
    """The cell's sample in its region's samples dataset (None when the region holds no such cell)."""
    cells = ds["cell_ids"].values
    index = int(np.searchsorted(cells, np.uint64(cell)))
    if index >= len(cells) or int(cells[index]) != int(cell):
        return None
    names = [str(n) for n in ds["class_name"].values]
    fractions = ds["fractions"].values[index]
    dominant = int(ds["dominant_class"].values[index])
    order = np.argsort(fractions)[::-1]
    return CellSample(
        status=ds.attrs["statuses"][int(ds["status"].values[index])],
        dominant_class=names[dominant] if dominant >= 0 else None,
        valid_fraction=float(ds["valid_fraction"].values[index]),
        class_fractions={names[i]: round(float(fractions[i]), 6) for i in order if fractions[i] > 0},
        source_version=decode_version(ds["source_version"].values[index]),
    )


# ---------------------------------------------------------------------------------------------
# Embedding product (one store for the whole product)
# ---------------------------------------------------------------------------------------------


def _template(layout: ProductLayout, dim: int, attrs: dict) -> xr.Dataset:
    n, slot = layout.n_rows, layout.slot
    stacked = list(attrs.get("stacked_sources", []))
    statuses = cell_statuses(stacked)
    storage = attrs.get("embedding_storage", "float32")
    vectors = {}
    if "float32" in storage:
        vectors["embedding"] = (("cells", "embedding_dim"), da.full((n, dim), np.nan, dtype="f4", chunks=(slot, dim)))
    if "int8" in storage:
        vectors["embedding_int8"] = (("cells", "embedding_dim"), da.zeros((n, dim), dtype="i1", chunks=(slot, dim)),
                                     {"dequantisation": DEQUANTISATION})
        vectors["embedding_scale"] = (("cells",), da.full((n,), np.nan, dtype="f4", chunks=(slot,)))
    ds = xr.Dataset(
        {
            **vectors,
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
            **({"region_kept": _kept_attr(layout)} if layout.kept else {}),
            "statuses": {**{str(i): s for i, s in enumerate(statuses)}, str(NOT_COMPUTED): "not_computed"},
            "embedded_statuses": [STATUSES[i] for i in EMBEDDED],
            "embedding_storage": storage,
            "embedding": json.dumps(
                {"dim": dim, "dtype": "float32", "normalisation": "L2 (unit norm)", "quantisation": "none"}
                if storage == "float32" else
                {"dim": dim, "dtype": storage, "normalisation": "L2 (unit norm) before quantisation",
                 "quantisation": "int8, symmetric, one float32 scale per vector (max |component| / 127)",
                 "dequantisation": DEQUANTISATION}
            ),
            "model_versions": [],
            "source_versions": [],
        },
    )
    if stacked:  # every stacked source's content version per row, beside the primary's source_version
        ds["stacked_source_version"] = (("cells", "stacked_source"),
                                        da.zeros((n, len(stacked)), dtype=VERSION_DTYPE, chunks=(slot, len(stacked))),
                                        {"encoding_of_versions": VERSION_ENCODING})
        ds.coords["stacked_source"] = ("stacked_source", np.array(stacked, dtype=object))
    return ds


_ENCODING = {
    "embedding": {"fill_value": np.nan},
    "embedding_int8": {"fill_value": 0},
    "embedding_scale": {"fill_value": np.nan},
    "status": {"fill_value": NOT_COMPUTED},
    "model_version": {"fill_value": 0},
    "source_version": {"fill_value": 0},
}


def _encoding(template: xr.Dataset) -> dict:
    """Fill values of the variables a product store has (they depend on its vector storage and stack)."""
    return {k: v for k, v in {**_ENCODING, "stacked_source_version": {"fill_value": 0}}.items() if k in template}


class StoreLayoutError(RuntimeError):
    """The product store's rows are laid out for other regions than the writer's (the stencil changed)."""


def _kept_attr(layout: ProductLayout) -> dict[str, list[str]]:
    """The layout's kept sub-regions as the store's attribute (a stencil finer than the regions)."""
    return {f"{region:x}": [f"{sub:x}" for sub in subs] for region, subs in sorted(layout.kept.items())}


def stored_layout(attrs: dict) -> ProductLayout:
    """The row layout a product store's attributes describe (its regions, and kept sub-regions if any)."""
    kept = {int(r, 16): [int(sub, 16) for sub in subs] for r, subs in attrs.get("region_kept", {}).items()}
    return ProductLayout.build(np.array([int(r, 16) for r in attrs.get("regions", [])], dtype=np.uint64),
                               int(attrs["resolution"]), int(attrs["region_resolution"]), kept)


def _same_layout(attrs: dict, sizes: dict, layout: ProductLayout, dim: int) -> bool:
    return (attrs.get("regions") == [f"{int(r):x}" for r in layout.regions]
            and attrs.get("region_kept", {}) == _kept_attr(layout)
            and attrs.get("resolution") == layout.resolution and sizes.get("embedding_dim") == dim)


def ensure_product_store(path: StorePath, layout: ProductLayout, dim: int, attrs: dict) -> bool:
    """Create the product store for a layout, or migrate an existing one whose regions changed, in one
    commit (readers see the old layout or the new one, never a mix).

    Rows of regions present in both layouts are carried over, so nothing materialized is lost. A plain
    Zarr store written before stores were transactional is converted (beside it, then swapped in).
    Returns True if the store was (re)written."""
    final = path if is_remote(path) else Path(path)
    if plain_store_exists(final):
        return _convert_plain_store(final, layout, dim, attrs)

    def write(store) -> bool:
        previous = _open_if_any(store)
        if (previous is not None and _same_layout(previous.attrs, previous.sizes, layout, dim)
                and list(previous.attrs.get("stacked_sources", [])) == list(attrs.get("stacked_sources", []))
                and previous.attrs.get("embedding_storage", "float32") == attrs.get("embedding_storage", "float32")):
            return False
        kept = _rows_to_carry(previous, layout, dim, attrs) if previous is not None else None
        _write_template(store, layout, dim, attrs, kept)
        return True

    if not is_remote(final):
        final.parent.mkdir(parents=True, exist_ok=True)
    return transact(final, write, f"product layout: {len(layout.regions)} regions at res {layout.resolution}",
                    create=True).changed


def _open_if_any(store) -> xr.Dataset | None:
    try:
        return xr.open_zarr(store, consolidated=False, chunks=None)
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return None


def _write_template(store, layout: ProductLayout, dim: int, attrs: dict, kept: "_CarriedRows | None") -> None:
    template = _template(layout, dim, attrs)
    template.to_zarr(store, compute=False, mode="w", zarr_format=3, consolidated=False, encoding=_encoding(template))
    if kept is None:
        return
    for rows, part in kept.regions:
        part.to_zarr(store, region={"cells": rows}, zarr_format=3, consolidated=False, safe_chunks=False)
    zarr.open_group(store, mode="r+").attrs.update(kept.lineage)


@dataclass
class _CarriedRows:
    regions: list[tuple[slice, xr.Dataset]]  # (rows in the new layout, the region's data)
    lineage: dict


def _rows_to_carry(previous: xr.Dataset, layout: ProductLayout, dim: int, attrs: dict) -> _CarriedRows | None:
    """The rows of regions in both layouts, read before the new layout is written over them (not when the
    vectors' storage changes: float32 <-> int8 re-embeds)."""
    if (previous.sizes.get("embedding_dim") != dim or previous.attrs.get("resolution") != layout.resolution
            or previous.attrs.get("embedding_storage", "float32") != attrs.get("embedding_storage", "float32")):
        return None
    carried = [v for v in ("embedding", "embedding_int8", "embedding_scale") if v in previous]
    old_layout = stored_layout(previous.attrs)
    old_regions = [int(r) for r in old_layout.regions]
    regions = []
    for region in sorted(set(old_regions) & {int(r) for r in layout.regions}):
        if old_layout.kept.get(region) != layout.kept.get(region):
            continue  # other cells than before: the region is embedded again
        part = previous[[*carried, "status", "model_version", "source_version"]].isel(
            cells=old_layout.rows_of(region)).load()  # stacked lineage is not carried: a new stack re-embeds
        regions.append((layout.rows_of(region), part.drop_vars("cell_ids")))
    return _CarriedRows(regions, {k: list(previous.attrs.get(k, [])) for k in ("model_versions", "source_versions")})


def _convert_plain_store(final: StorePath, layout: ProductLayout, dim: int, attrs: dict) -> bool:
    """A plain Zarr product store (before transactions) becomes a repository holding the same rows."""
    previous = xr.open_zarr(zarr_target(final), consolidated=False, chunks=None)
    kept = _rows_to_carry(previous, layout, dim, {**previous.attrs, **attrs})
    tmp = sibling(final, f".{store_name(final)}.tmp-{uuid.uuid4().hex[:8]}")
    transact(tmp, lambda store: _write_template(store, layout, dim, {**previous.attrs, **attrs}, kept),
             "converted from a plain Zarr store", create=True)
    replace_directory(tmp, final)
    return True


# Product rows a run commits at once: one snapshot per ~100,000 rows (a commit per region cost more than
# its rows), memory bounded whatever the run's size.
ROWS_PER_COMMIT = 100_000


@dataclass
class RegionWrite:
    """One region's rows for the product store (see ``write_product_regions``)."""

    region: int
    embedding: np.ndarray
    status: np.ndarray
    model_version: str
    source_version: str | np.ndarray  # one version for every row, or per row the encoded (uint64) version
    stacked_source_version: np.ndarray | None = None  # (rows, stacked sources) encoded, for products with a stack


def write_product_region(
    path: StorePath,
    layout: ProductLayout,
    region: int,
    embedding: np.ndarray,
    status: np.ndarray,
    model_version: str,
    source_version: str | np.ndarray,
    stacked_source_version: np.ndarray | None = None,
) -> str:
    """Replace one region's rows (embeddings, statuses, lineage) in the product store, as one commit
    that readers see whole; returns the snapshot id that holds them.

    ``source_version``: one version for every row, or per row the encoded (uint64) version.
    ``stacked_source_version``: (rows, stacked sources) encoded versions, for products with a stack."""
    return write_product_regions(path, layout, [RegionWrite(region, embedding, status, model_version, source_version,
                                                            stacked_source_version)])


def _region_part(layout: ProductLayout, write: RegionWrite) -> tuple[slice, xr.Dataset, list[str]]:
    rows = layout.rows_of(write.region)
    n = rows.stop - rows.start
    if write.embedding.shape[0] != n or write.status.shape[0] != n:
        raise ValueError(f"region {write.region:x}: expected {n} rows, got {write.embedding.shape[0]} embeddings")
    if isinstance(write.source_version, str):
        source_rows = np.full(n, encode_version(write.source_version), dtype=VERSION_DTYPE)
    else:
        source_rows = np.asarray(write.source_version, dtype=VERSION_DTYPE)
    sources = sorted({decode_version(v) for v in np.unique(source_rows) if v})
    part = xr.Dataset({
        "status": (("cells",), write.status.astype(np.uint8)),
        "model_version": (("cells",), np.full(n, encode_version(write.model_version), dtype=VERSION_DTYPE)),
        "source_version": (("cells",), source_rows),
        "embedding": (("cells", "embedding_dim"), np.asarray(write.embedding, dtype=np.float32)),
    })
    if write.stacked_source_version is not None:
        part["stacked_source_version"] = (("cells", "stacked_source"),
                                          np.asarray(write.stacked_source_version, dtype=VERSION_DTYPE))
        sources += sorted({decode_version(v) for v in np.unique(write.stacked_source_version) if v} - set(sources))
    return rows, part, sources


def write_product_regions(path: StorePath, layout: ProductLayout, writes: list[RegionWrite]) -> str:
    """Replace several regions' rows in the product store as one commit that readers see whole (a run's
    regions: one transaction, and one write per span of adjacent regions, not one per region); returns
    the snapshot id that holds them."""
    parts = sorted((_region_part(layout, w) for w in writes), key=lambda p: p[0].start)
    spans: list[list[tuple[slice, xr.Dataset, list[str]]]] = []
    for part in parts:  # adjacent regions' rows are written together
        if spans and spans[-1][-1][0].stop == part[0].start:
            spans[-1].append(part)
        else:
            spans.append([part])
    models = list(dict.fromkeys(w.model_version for w in writes))
    sources = list(dict.fromkeys(v for _, _, found in parts for v in found))
    dim = writes[0].embedding.shape[1] if writes else 0

    def write(store) -> None:
        group = zarr.open_group(store, mode="r+")
        stored = {name for name in ("embedding", "embedding_int8") if name in group}
        if not _same_layout(dict(group.attrs), {"embedding_dim": group[sorted(stored)[0]].shape[1]}, layout, dim):
            raise StoreLayoutError(f"product store {str(path)!r} is laid out for other regions than the writer of "
                                   f"regions {', '.join(f'{w.region:x}' for w in writes[:3])} expects (the stencil "
                                   "changed meanwhile): run the regions again")
        for span in spans:
            rows = slice(span[0][0].start, span[-1][0].stop)
            data = xr.concat([p for _, p, _ in span], dim="cells") if len(span) > 1 else span[0][1]
            if "embedding_int8" in stored:
                quantised = quantise_int8(data["embedding"].values, "vector")
                data = data.assign(embedding_int8=(("cells", "embedding_dim"), quantised.codes),
                                   embedding_scale=(("cells",), quantised.scale))
            if "embedding" not in stored:
                data = data.drop_vars("embedding")
            # Regions sharing a chunk are safe too: the commit that lost the race redoes its write on top.
            data.to_zarr(store, region={"cells": rows}, zarr_format=3, consolidated=False, safe_chunks=False)
        for key, values in (("model_versions", models), ("source_versions", sources)):
            seen = list(group.attrs.get(key, []))
            new = [v for v in values if v not in seen]
            if new:
                group.attrs[key] = seen + new

    if not is_repository(path):
        if plain_store_exists(path):
            raise StoreLayoutError(f"product store {str(path)!r} is a plain Zarr store from before transactional "
                                   "stores: materialize the product's h3_regions asset once to convert it")
        raise FileNotFoundError(f"embedding store {str(path)!r} does not exist; materialize h3_regions first")
    rows = sum(p[0].stop - p[0].start for p in parts)
    what = (f"region {writes[0].region:x}" if len(writes) == 1 else f"{len(writes)} regions") + \
        f": {rows} rows, model {', '.join(models)}"
    return transact(path, write, what).snapshot


def embedding_array(product: xr.Dataset) -> xr.DataArray:
    """The product's vectors as float32 (cells, embedding_dim), lazily where the dataset is: the float32
    variable, or the int8 codes dequantised (codes x per-vector scale, renormalised to unit length)."""
    if "embedding" in product:
        return product["embedding"]
    vectors = product["embedding_int8"].astype(np.float32) * product["embedding_scale"]
    norm = np.sqrt((vectors * vectors).sum("embedding_dim"))
    return (vectors / norm).rename("embedding")


def open_product(path: StorePath, chunks: dict | str | None = None, snapshot: str | None = None) -> xr.Dataset:
    """The product store at its latest snapshot (or ``snapshot``); ``attrs["snapshot"]`` names the one
    read. Without ``chunks`` it is lazily indexed without dask: reading one region's rows reads just its
    chunks (``chunks={}`` gives dask arrays, one task per chunk). A plain Zarr store from before
    transactional stores is still read."""
    if not is_repository(path):
        return open_store(path, "embedding store", chunks)
    store, snapshot_id = snapshot_store(path, snapshot)
    ds = xr.open_zarr(store, consolidated=False, chunks=chunks)
    ds.attrs["snapshot"] = snapshot_id
    return ds
