"""The H3 stencil: which coarse regions hold valid, non-background data and become partitions."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager

import numpy as np
import rasterio
import rasterio.errors
from pydantic import BaseModel, ConfigDict

from geoembed.core.grids.h3 import (
    ProductLayout, cell_centres, kept_cell_count, kept_cells, parent_cells, parse_region_key, region_cells, region_key,
    regions_touching,
)
from geoembed.core.rasters import RasterInfo, RasterInputError
from geoembed.landcover.categorical import distinct_values, resolve_legend
from geoembed.core.sources import SourceFile, manifest_version
from geoembed.landcover.windows import STATUSES, Legend, RasterBlocks, has_foreground, holds_centres, sample_windows
from geoembed.landcover.settings import ProductSettings


@dataclass
class Stencil:
    regions: np.ndarray  # uint64, regions with data
    cells_per_region: dict[str, int]
    candidates: int
    status_counts: dict[str, int]
    seconds: float
    unknown_values: list[int] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)  # regions with a cell centre inside the raster
    kept: dict[str, list[str]] = field(default_factory=dict)  # region -> sub-regions with data (finer stencil)

    @property
    def n_cells(self) -> int:
        return int(sum(self.cells_per_region.values()))


def product_legend(settings: ProductSettings, info: RasterInfo) -> Legend:
    """The configured legend, or (none configured) one class per distinct raster value."""
    values = None if settings.legend is not None else distinct_values(info.location, info.nodata)
    return Legend.from_mapping(resolve_legend(settings, values, info.location))


def clip_to_bbox(bounds: tuple[float, float, float, float], bbox: tuple[float, float, float, float] | None):
    if bbox is None:
        return bounds
    original = bounds
    west, south, east, north = bounds
    bw, bs, be, bn = bbox
    if west <= east and bw <= be:
        west, east = max(west, bw), min(east, be)
    else:  # one of them crosses the antimeridian: keep the configured box
        west, east = bw, be
    south, north = max(south, bs), min(north, bn)
    if south >= north or (west > east and bw <= be):
        raise RasterInputError(f"bbox {list(bbox)} does not overlap the raster {info_bounds_text(original)}")
    return (west, south, east, north)


def info_bounds_text(bounds: tuple[float, float, float, float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in bounds) + "] (west, south, east, north)"


def scan_regions(
    src: rasterio.DatasetReader,
    info: RasterInfo,
    legend: Legend,
    settings: ProductSettings,
    progress: Callable[[int, int, int], None] | None = None,
) -> Stencil:
    """Sample every cell of every candidate region; keep regions with a foreground cell. With a stencil
    finer than the regions (``stencil_resolution``), a region keeps only its sub-regions at that
    resolution with a foreground cell, and only their cells count.

    Raises RasterInputError if the raster overlaps no cell with data, or (unknown_classes: error)
    holds values that are not in the legend."""
    start = time.perf_counter()
    bounds = clip_to_bbox(info.lonlat_bounds(), settings.bbox)
    candidates = regions_touching(bounds, settings.region_res)
    blocks = RasterBlocks(src)
    kept: list[int] = []
    covered: list[str] = []
    cells_per_region: dict[str, int] = {}
    kept_subregions: dict[str, list[str]] = {}
    finer = settings.stencil_res > settings.region_res
    status = np.zeros(len(STATUSES), dtype=np.int64)
    unknown: set[int] = set()
    for i, region in enumerate(candidates):
        cells = region_cells(int(region), settings.resolution)
        lat, lon = cell_centres(cells)
        if settings.bbox is not None:
            inside = _in_bbox(lat, lon, settings.bbox)
            if not inside.any():
                continue
        if holds_centres(info, lat, lon).any():
            covered.append(region_key(int(region)))
        samples = sample_windows(blocks, info, legend, cells, lat, lon, settings.window_size,
                                 settings.min_valid_fraction, flag_unknown=settings.unknown_classes == "flag")
        unknown.update(int(v) for v in samples.unknown_values)
        foreground = has_foreground(samples, legend, settings.background_classes)
        if settings.bbox is not None:
            foreground &= inside
        if foreground.any():
            kept.append(int(region))
            in_stencil = np.ones(len(cells), dtype=bool)
            if finer:
                parents = parent_cells(cells, settings.stencil_res)
                subs = np.unique(parents[foreground])
                in_stencil = np.isin(parents, subs)
                kept_subregions[region_key(int(region))] = [region_key(int(c)) for c in subs]
            cells_per_region[region_key(int(region))] = int(in_stencil.sum())
            status += np.bincount(samples.status[in_stencil], minlength=len(STATUSES))
        if progress and (i + 1) % 50 == 0:
            progress(i + 1, len(candidates), len(kept))
    if unknown and settings.unknown_classes == "error":
        raise RasterInputError(
            f"raster {info.location!r} holds values {sorted(unknown)[:20]} that are not in the legend "
            f"(classes {legend.values.tolist()}); fix the legend, or set unknown_classes: flag to keep those "
            "cells with status 'unknown_class'"
        )
    if not kept:
        raise RasterInputError(
            f"raster {info.location!r} covers no H3 cell (resolution {settings.resolution}) with valid, "
            f"non-background data within {info_bounds_text(bounds)}"
        )
    return Stencil(
        regions=np.array(kept, dtype=np.uint64),
        cells_per_region=cells_per_region,
        candidates=len(candidates),
        status_counts={name: int(n) for name, n in zip(STATUSES, status)},
        seconds=time.perf_counter() - start,
        unknown_values=sorted(unknown),
        covered=covered,
        kept=kept_subregions,
    )


def _in_bbox(lat: np.ndarray, lon: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    west, south, east, north = bbox
    in_lon = (lon >= west) & (lon <= east) if west <= east else (lon >= west) | (lon <= east)
    return in_lon & (lat >= south) & (lat <= north)


@dataclass
class FileStencil:
    """What one source file contributes to the stencil (kept in the stencil state, reused while the
    file's content version is unchanged)."""

    name: str
    location: str
    version: str
    fingerprint: str
    modified_ns: int
    regions: list[str]  # regions where it has valid, non-background data (they become partitions)
    covered: list[str]  # regions with a cell whose centre lies in its grid (it provides those cells)
    cells_per_region: dict[str, int]
    status_counts: dict[str, int]
    error: str = ""
    kept: dict[str, list[str]] = field(default_factory=dict)  # region -> sub-regions with data (finer stencil)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class MosaicStencil:
    """The stencil of a product whose source is one or more files, and what changed since the last one."""

    files: list[FileStencil]  # newest first
    regions: list[str]  # every region with data in some file, plus regions kept from removed files
    region_sources: dict[str, list[str]]  # region -> names of the files covering it, newest first
    cells_per_region: dict[str, int]
    changed_regions: list[str]  # regions whose source data changed: their partitions need a refresh
    orphaned_regions: list[str]  # regions no file covers any more: previous rows kept, not refreshed
    added: list[str]
    changed: list[str]
    removed: list[str]
    region_kept: dict[str, list[str]] = field(default_factory=dict)  # finer stencil: region -> sub-regions kept

    @property
    def status_counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for f in self.files:
            for k, v in f.status_counts.items():
                total[k] = total.get(k, 0) + v
        return total


def merge_stencils(files: list[FileStencil], previous: StencilState | None, resolution: int | None = None) -> MosaicStencil:
    """Combine per-file stencils (newest first) and compare with the previous stencil state.

    ``previous``: the state the last stencil wrote, or None when nothing comparable exists (first run,
    or settings changed): then every region counts as changed. ``resolution``: the cells' (needed to
    count a region's cells when files keep different sub-regions of it)."""
    cells: dict[str, int] = {}
    for f in files:
        if not f.error:
            cells.update({key: f.cells_per_region[key] for key in f.regions})
    # A finer stencil: a region keeps every sub-region some file has data in (a file keeping the whole
    # region keeps it whole).
    region_kept: dict[str, set[str] | None] = {}
    for f in files:
        for key in [] if f.error else f.regions:
            subs = f.kept.get(key)
            if subs is None or region_kept.get(key, set()) is None:
                region_kept[key] = None
            else:
                region_kept[key] = region_kept.get(key, set()) | set(subs)
    merged_kept = {key: sorted(subs) for key, subs in region_kept.items() if subs is not None}
    for key, subs in merged_kept.items():
        if resolution is not None:
            cells[key] = kept_cell_count(int(key, 16), resolution, [int(k, 16) for k in subs])
    # A region's sources: every file providing some of its cells (a newer file may hold only
    # background there and still replaces the older file's pixels for those cells).
    region_sources: dict[str, list[str]] = {key: [] for key in cells}
    for f in files:
        if not f.error:
            for key in f.covered:
                if key in region_sources:
                    region_sources[key].append(f.name)
    for f in files:  # regions with data only in windows reaching over a file's edge
        if not f.error:
            for key in f.regions:
                if f.name not in region_sources[key] and not region_sources[key]:
                    region_sources[key].append(f.name)
    old_files = previous.sources if previous else {}
    old_regions = previous.regions if previous else []
    names = {f.name for f in files}
    added = [f.name for f in files if f.name not in old_files]
    changed = [f.name for f in files if f.name in old_files and old_files[f.name].version != f.version]
    removed = sorted(set(old_files) - names)
    touched: set[str] = set()
    for f in files:
        if f.name in added or f.name in changed:
            touched.update(f.covered)
            touched.update(old_files[f.name].covered if f.name in old_files else [])
    for name in removed:
        touched.update(old_files[name].covered)
    orphaned = sorted(k for k in old_regions if k not in region_sources)
    for key in orphaned:  # keep what was there: its rows stay until a file covers it again
        region_sources[key] = []
        cells[key] = previous.cells_per_region.get(key, 0) if previous else 0
        if previous and key in previous.region_kept:
            merged_kept[key] = previous.region_kept[key]
    regions = sorted(region_sources)
    if previous is None:
        changed_regions = [k for k in regions if region_sources[k]]
    else:
        changed_regions = sorted(k for k in touched if region_sources.get(k))
    return MosaicStencil(files, regions, region_sources, cells, changed_regions, orphaned, added, changed, removed,
                         merged_kept)


STACK_PREFIX = "stack/"  # names stacked sources among a product's source files


class StackedSourceState(BaseModel):
    """A stacked source as the stencil saw it: where it is, its content version, and (categorical) its legend."""

    name: str
    kind: str
    location: str
    version: str
    fingerprint: str
    legend: dict[str, str] = {}
    min_valid_fraction: float

    @property
    def class_legend(self) -> Legend | None:
        return Legend.from_mapping({int(k): v for k, v in self.legend.items()}) if self.legend else None


class StencilNotCurrentError(LookupError):
    """A region partition is not part of the product's current stencil."""


class StencilState(BaseModel):
    """What ``h3_regions`` hands to every later asset (stored as the product's stencil.json): the
    settings it was made with, the legend, the regions with data and their cells, which source files
    provide each region (newest first), and every file's scan (reused while its content is unchanged)."""

    model_config = ConfigDict(extra="ignore")

    settings: dict
    source_version: str
    legend: dict[str, str]
    regions: list[str]
    cells_per_region: dict[str, int]
    region_sources: dict[str, list[str]]
    sources: dict[str, FileStencil] = {}
    stacked: list[StackedSourceState] = []  # in product order
    region_kept: dict[str, list[str]] = {}  # finer stencil: region -> its sub-regions that hold data

    @property
    def class_legend(self) -> Legend:
        return Legend.from_mapping({int(k): v for k, v in self.legend.items()})

    def region_ids(self) -> np.ndarray:
        return np.array([int(k, 16) for k in self.regions], dtype=np.uint64)

    def layout(self, settings: ProductSettings) -> ProductLayout:
        """The rows of the product store for these regions."""
        return ProductLayout.build(self.region_ids(), settings.resolution, settings.region_res, {
            int(key, 16): [int(sub, 16) for sub in subs] for key, subs in self.region_kept.items()})

    def region_cells(self, key: str, settings: ProductSettings) -> np.ndarray:
        """The cells of a region that the product holds (all its cells, or those of its kept sub-regions)."""
        kept = self.region_kept.get(key)
        return kept_cells(parse_region_key(key, settings.region_res), settings.resolution,
                          None if kept is None else [int(sub, 16) for sub in kept])

    def checked_keys(self, keys: list[str], settings: ProductSettings) -> list[str]:
        """The partition keys, each validated and known to this stencil."""
        for key in keys:
            parse_region_key(key, settings.region_res)
            if key not in self.cells_per_region:
                raise StencilNotCurrentError(
                    f"region {key!r} is not in the current stencil of {settings.name!r}; re-materialize h3_regions")
        return list(keys)

    def known_versions(self) -> dict[str, tuple[str, str]]:
        """{source file: (fingerprint, content version)} as this stencil saw them (stacked sources included)."""
        return {**{name: (f.fingerprint, f.version) for name, f in self.sources.items()},
                **{STACK_PREFIX + s.name: (s.fingerprint, s.version) for s in self.stacked}}

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


@dataclass
class StencilUpdate:
    """A new stencil state and what changed since the previous one."""

    state: StencilState
    mosaic: MosaicStencil
    rejected: dict[str, str]  # file -> why it is not used
    compared: bool  # False: nothing comparable before (first run or new settings), every region is new


def update_stencil(
    settings: ProductSettings,
    files: list[SourceFile],
    previous: StencilState | None,
    describe: Callable[[str], RasterInfo],
    open_source: Callable[[str], ContextManager[rasterio.DatasetReader]],
    warn: Callable[[str], None] = lambda _: None,
    progress: Callable[[str, int, int, int], None] | None = None,
    stacked_files: list[SourceFile] = (),
) -> StencilUpdate:
    """Scan the product's source files (newest first, with content versions) into a new stencil.

    Files whose content version is unchanged since ``previous`` keep their scan. In a landing location
    an unreadable file is rejected (listed, warned about) and the others are used; a single raster
    source must be readable. ``stacked_files``: the stacked sources (product order, from
    ``RasterReader.stacked_files``); each must be readable, and a change in one refreshes every region."""
    stacked = _stacked_states(settings, list(stacked_files), describe)
    current_settings = settings.model_dump(mode="json")
    comparable = previous if previous and previous.settings == current_settings and previous.sources else None
    old_files = comparable.sources if comparable else {}
    legend = comparable.class_legend if comparable else _first_legend(settings, files, describe, warn)
    scanned: list[FileStencil] = []
    for f in files:
        old = old_files.get(f.name)
        if old and old.version == f.version and not old.error:
            scanned.append(replace(old, location=f.location, fingerprint=f.fingerprint, modified_ns=f.modified_ns))
            continue
        try:
            info = describe(f.location)
            with open_source(f.location) as src:
                stencil = scan_regions(src, info, legend, settings, progress=None if progress is None else (
                    lambda i, n, k, name=f.name: progress(name, i, n, k)))
        except (RasterInputError, rasterio.errors.RasterioIOError) as exc:
            if settings.landing is None:
                raise
            warn(f"landing file {f.name!r} is not used: {exc}")
            scanned.append(FileStencil(f.name, f.location, f.version, f.fingerprint, f.modified_ns, [], [], {}, {},
                                       error=str(exc)))
            continue
        scanned.append(FileStencil(f.name, f.location, f.version, f.fingerprint, f.modified_ns,
                                   [region_key(int(r)) for r in stencil.regions], stencil.covered,
                                   stencil.cells_per_region, stencil.status_counts, kept=stencil.kept))
    mosaic = merge_stencils(scanned, comparable, settings.resolution)
    if comparable is not None and [(x.name, x.version) for x in comparable.stacked] != [(x.name, x.version) for x in stacked]:
        mosaic.changed_regions = [k for k in mosaic.regions if mosaic.region_sources[k]]
    rejected = {**getattr(files, "rejected", {}), **{f.name: f.error for f in scanned if f.error}}
    if not any(mosaic.region_sources.values()):
        raise RasterInputError(f"no source file of {settings.name!r} covers an H3 cell with data; "
                               f"rejected files: {rejected}")
    state = StencilState(
        settings=current_settings,
        source_version=manifest_version([*files, *stacked_files]),
        legend={str(v): n for v, n in zip(legend.values.tolist(), legend.names)},
        regions=mosaic.regions,
        cells_per_region=mosaic.cells_per_region,
        region_sources=mosaic.region_sources,
        sources={f.name: f for f in scanned},
        stacked=stacked,
        region_kept=mosaic.region_kept,
    )
    return StencilUpdate(state, mosaic, rejected, comparable is not None)


def _first_legend(settings: ProductSettings, files: list[SourceFile], describe: Callable[[str], RasterInfo],
                  warn: Callable[[str], None]) -> Legend:
    """The legend, from the newest file that can be read (in a landing location an unreadable newest
    file is passed over: the scan lists it as rejected)."""
    problems = []
    for f in files:
        try:
            return product_legend(settings, describe(f.location))
        except (RasterInputError, rasterio.errors.RasterioIOError) as exc:
            if settings.landing is None:
                raise
            problems.append(f"{f.name}: {exc}")
    raise RasterInputError(f"no source file of {settings.name!r} can be read: {problems[:5]}")


def _stacked_states(settings: ProductSettings, files: list[SourceFile],
                    describe: Callable[..., RasterInfo]) -> list[StackedSourceState]:
    """Each stacked source checked readable (and its legend resolved) before anything is written."""
    if len(files) != len(settings.stack):
        raise ValueError(f"{len(settings.stack)} stacked sources configured, {len(files)} files given")
    states = []
    for source, f in zip(settings.stack, files):
        info = describe(f.location, nodata_override=source.nodata, kind=source.kind)
        legend = {}
        if source.kind == "categorical":
            values = None if source.legend is not None else distinct_values(f.location, info.nodata)
            legend = {str(k): v for k, v in resolve_legend(source, values, f.location).items()}
        states.append(StackedSourceState(
            name=source.name, kind=source.kind, location=f.location, version=f.version, fingerprint=f.fingerprint,
            legend=legend, min_valid_fraction=source.min_valid_fraction or settings.min_valid_fraction))
    return states
