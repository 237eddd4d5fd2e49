"""What one region partition computes: its samples from the source mosaic, its embeddings, and the rows
it loads into PostgreSQL. Asset bodies call these; I/O comes in through the callables they are given."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import numpy as np
import rasterio
import xarray as xr

from geoembed.core.grids.h3 import ProductLayout, cell_centres, parse_region_key
from geoembed.core.lineage import combined_version, decode_version, encode_version
from geoembed.core.rasters import RasterInfo, RasterInputError
from geoembed.core.sinks.pgvector import RegionRows
from geoembed.landcover.settings import ProductSettings
from geoembed.landcover.stencil import STACK_PREFIX, StackedSourceState, StencilState
from geoembed.landcover.stores import NOT_COMPUTED, StackedSamples, embedding_array, model_inputs, samples_dataset
from geoembed.landcover.windows import (
    EMBEDDED, RasterBlocks, StackedWindows, apply_missing_sources, merge_rows, sample_mosaic, sample_stacked,
)


class SourceChangedError(LookupError):
    """A source file changed or vanished after the stencil was made: the stencil must be refreshed first."""


class RegionNotCoveredError(LookupError):
    """No source file covers the region any more (its previous rows are kept)."""


class MosaicRasters(contextlib.ExitStack):
    """The product's source files, opened on first use and closed together; a file whose fingerprint
    differs from the stencil's (changed or removed since) is refused."""

    def __init__(self, state: StencilState, landed: dict[str, str], describe: Callable[..., RasterInfo],
                 open_source: Callable[[str], ContextManager[rasterio.DatasetReader]],
                 stacked_nodata: dict[str, float | None] | None = None):
        super().__init__()
        self.state, self.landed, self.describe, self.open_source = state, landed, describe, open_source
        self.stacked_nodata = stacked_nodata or {}
        self._opened: dict[str, tuple[RasterBlocks, RasterInfo]] = {}

    def __call__(self, file_name: str) -> tuple[RasterBlocks, RasterInfo]:
        if file_name not in self._opened:
            entry = self.state.sources[file_name]
            if self.landed.get(file_name) != entry.fingerprint:
                raise SourceChangedError(
                    f"source file {entry.location!r} was {'removed' if file_name not in self.landed else 'changed'} "
                    f"after the stencil was made; re-materialize h3_regions first (the landing sensor does)")
            info = self.describe(entry.location)
            self._opened[file_name] = (RasterBlocks(self.enter_context(self.open_source(entry.location))), info)
        return self._opened[file_name]

    def stacked(self, entry: StackedSourceState) -> tuple[RasterBlocks, RasterInfo]:
        """A stacked source, refused when it changed after the stencil was made."""
        key = STACK_PREFIX + entry.name
        if key not in self._opened:
            if self.landed.get(key) != entry.fingerprint:
                raise SourceChangedError(
                    f"stacked source {entry.name!r} ({entry.location!r}) changed after the stencil was made; "
                    "re-materialize h3_regions first")
            info = self.describe(entry.location, nodata_override=self.stacked_nodata.get(entry.name),
                                 kind=entry.kind)
            self._opened[key] = (RasterBlocks(self.enter_context(self.open_source(entry.location))), info)
        return self._opened[key]


def region_samples(key: str, state: StencilState, settings: ProductSettings, rasters: MosaicRasters) -> xr.Dataset:
    """A region's windows, class fractions and statuses, each cell read from the newest file providing it,
    with the content version of that file per cell."""
    names = state.region_sources.get(key) or []
    if not names:
        raise RegionNotCoveredError(f"region {key} is no longer covered by any source file; its previous rows "
                                    "are kept. Land a file that covers it, or leave this partition as it is")
    cells = state.region_cells(key, settings)
    lat, lon = cell_centres(cells)
    samples, source_index = sample_mosaic([rasters(n) for n in names], state.class_legend, cells, lat, lon,
                                          settings.window_size, settings.min_valid_fraction,
                                          settings.unknown_classes == "flag")
    if len(samples.unknown_values) and settings.unknown_classes == "error":
        raise RasterInputError(
            f"raster {state.sources[names[0]].location!r}: region {key} holds values "
            f"{samples.unknown_values.tolist()} that are not in the legend; nothing was written for this region"
        )
    stacked = stacked_windows(state, settings, rasters, names, source_index, lat, lon)
    for entry, windows in zip(state.stacked, stacked):
        if windows.unknown_values is not None and len(windows.unknown_values) and settings.unknown_classes == "error":
            raise RasterInputError(
                f"stacked source {entry.name!r} ({entry.location!r}): region {key} holds values "
                f"{windows.unknown_values.tolist()} that are not in its legend; nothing was written for this region")
    if stacked:
        samples.status = apply_missing_sources(samples.status, stacked, [e.min_valid_fraction for e in state.stacked])
    versions = [state.sources[n].version for n in names]
    return samples_dataset(samples, state.class_legend, settings.resolution, {
        "product": settings.name, "region": key,
        "source_version": combined_version(versions + [e.version for e in state.stacked]),
        "source_files": json.dumps(names), "raster": settings.source_description,
        "window_size": settings.window_size,
    }, source_versions=[versions[j] for j in source_index], statuses=settings.statuses,
        stacked=[StackedSamples(w, e.version, e.class_legend) for w, e in zip(stacked, state.stacked)])


def stacked_windows(state: StencilState, settings: ProductSettings, rasters: MosaicRasters, names: list[str],
                    source_index: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> list[StackedWindows]:
    """Every stacked source's windows on the footprint of each cell's primary window (the primary file a
    cell was read from gives its footprint)."""
    out = []
    for entry in state.stacked:
        blocks, info = rasters.stacked(entry)
        parts = []
        for i in np.unique(source_index):
            rows = np.nonzero(source_index == i)[0]
            primary = rasters(names[int(i)])[1]
            parts.append((rows, sample_stacked(entry.name, entry.kind, blocks, info, primary, lat[rows], lon[rows],
                                               settings.window_size, entry.class_legend)))
        out.append(merge_rows(parts, len(lat)))
    return out


@dataclass
class RegionEmbeddings:
    """A region's embeddings (NaN rows for cells not embedded) and what its checks count."""

    vectors: np.ndarray
    status: np.ndarray
    source_versions: np.ndarray  # per cell, encoded
    embedded: int
    missing: int  # embedded cells whose vector is all NaN
    with_nan: int
    off_unit_norm: int
    stacked_source_versions: np.ndarray | None = None  # (cells, stacked sources), encoded; None without a stack


def region_embeddings(samples: xr.Dataset, dim: int, infer: Callable[[np.ndarray], np.ndarray]) -> RegionEmbeddings:
    """Every embeddable cell of a region through the model (``infer``: windows -> unit vectors)."""
    status = samples["status"].values
    embedded = np.isin(status, EMBEDDED)
    vectors = np.full((len(status), dim), np.nan, dtype=np.float32)
    if embedded.any():
        vectors[embedded] = infer(model_inputs(samples, embedded))
    norms = np.linalg.norm(vectors[embedded], axis=1)
    return RegionEmbeddings(
        vectors, status, row_source_versions(samples), int(embedded.sum()),
        missing=int(np.isnan(vectors[embedded]).all(axis=1).sum()),
        with_nan=int(np.isnan(vectors[embedded]).any(axis=1).sum()),
        off_unit_norm=int((np.abs(norms - 1) > 1e-3).sum()),
        stacked_source_versions=samples["stacked_source_version"].values if "stacked_source_version" in samples
        else None,
    )


def row_source_versions(samples: xr.Dataset) -> np.ndarray:
    """Per cell, the encoded version of the source file it was read from (older samples: one per region)."""
    if "source_version" in samples:
        return samples["source_version"].values
    return np.full(samples.sizes["cells"], encode_version(samples.attrs["source_version"]), dtype=np.uint64)


class RegionNotEmbeddedError(LookupError):
    """A region's table rows were asked for before its embeddings exist, or they mix model versions."""


# What the table needs of the product store (the rest, e.g. the class fractions, stays unread).
TABLE_VARIABLES = ("status", "model_version", "source_version", "stacked_source_version", "embedding",
                   "embedding_int8", "embedding_scale")
ROWS_PER_READ = 100_000  # product rows read at once for the table: memory stays flat whatever the run's size


def region_rows(product: xr.Dataset, layout: ProductLayout, key: str, region_res: int) -> RegionRows | None:
    """A region's embedded cells from the product store, ready to load (None: no embedded cell)."""
    region = parse_region_key(key, region_res)
    return _rows_of(product.isel(cells=layout.rows_of(region)), region, key)


def regions_rows(product: xr.Dataset, layout: ProductLayout, keys: list[str], region_res: int,
                 max_rows: int = ROWS_PER_READ) -> Iterator[tuple[str, RegionRows | None]]:
    """``(key, region_rows(...))`` for every key, in order, reading the product store once per span of
    consecutive regions (up to ``max_rows`` rows) instead of once per region and variable: a run's regions
    lie next to each other in the store."""
    regions = [(key, parse_region_key(key, region_res)) for key in keys]
    names = [n for n in TABLE_VARIABLES if n in product]
    batch: list[tuple[str, int, slice]] = []

    def flush() -> Iterator[tuple[str, RegionRows | None]]:
        start, stop = min(s.start for _, _, s in batch), max(s.stop for _, _, s in batch)
        if stop - start > 2 * sum(s.stop - s.start for _, _, s in batch):  # scattered: one read each
            for key, region, rows in batch:
                yield key, _rows_of(product.isel(cells=rows), region, key)
            return
        span = product[names].isel(cells=slice(start, stop)).load()
        for key, region, rows in batch:
            yield key, _rows_of(span.isel(cells=slice(rows.start - start, rows.stop - start)), region, key)

    count = 0
    for key, region in regions:
        rows = layout.rows_of(region)
        if batch and count + (rows.stop - rows.start) > max_rows:
            yield from flush()
            batch, count = [], 0
        batch.append((key, region, rows))
        count += rows.stop - rows.start
    if batch:
        yield from flush()


def _rows_of(part: xr.Dataset, region: int, key: str) -> RegionRows | None:
    status = part["status"].values
    keep = np.isin(status, EMBEDDED)
    if (status == NOT_COMPUTED).all():
        raise RegionNotEmbeddedError(f"region {key} has no embeddings yet; materialize cell_embeddings first")
    if not keep.any():
        return None
    cells = part["cell_ids"].values[keep]
    versions = {decode_version(v) for v in np.unique(part["model_version"].values[keep])}
    if len(versions) != 1:
        raise RegionNotEmbeddedError(f"region {key} mixes model versions {sorted(versions)}; re-run cell_embeddings")
    lat, lon = cell_centres(cells)
    sources = [decode_version(v) for v in part["source_version"].values[keep]]
    if "stacked_source_version" in part:  # every source's version: "<primary>;<name>=<version>;..."
        names = [str(n) for n in part["stacked_source"].values]
        stacked = part["stacked_source_version"].values[keep]
        sources = [";".join([primary, *(f"{n}={decode_version(v)}" for n, v in zip(names, row))])
                   for primary, row in zip(sources, stacked)]
    return RegionRows(region, cells, lon, lat, embedding_array(part).values[keep], versions.pop(), sources)
