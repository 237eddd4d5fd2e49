"""Imagery from any multi-band raster (GeoTIFF, COG, VRT, JPEG 2000... whatever GDAL reads), by configuration:
each file is one acquisition, dated by the configuration or by its name, its bands named by the configuration.
Such a file becomes a ``Scene`` of level "raster", so chipping, datacubes, no-data index and lineage take the
same code path as Sentinel-2 scenes; its stored values are turned into the datacube's DNs as they are read
(``chips.values_as_dn``)."""

from __future__ import annotations

import fnmatch
import re
from datetime import date, datetime, timezone
from pathlib import PurePosixPath
from typing import Callable

from geoembed.core.sources import SourceFile
from geoembed.imagery.catalog import SceneCatalog
from geoembed.imagery.scenes import RASTER_LEVEL, Scene
from geoembed.imagery.settings import RasterImagerySettings


def is_raster_file(name: str, config: RasterImagerySettings) -> bool:
    return fnmatch.fnmatch(PurePosixPath(name).name, config.pattern)


def raster_id(name: str) -> str:
    """A raster's id from its file name: the stem, with anything but letters, digits, '.', '-' and '_' as '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", PurePosixPath(name).stem)


def acquisition_date(name: str, config: RasterImagerySettings) -> date:
    """The configured date, else the one ``date_pattern`` finds in the file name (ValueError naming the file)."""
    if config.date is not None:
        return config.date
    match = re.search(config.date_pattern, PurePosixPath(name).name)
    if match is None:
        raise ValueError(f"no date in the file name (date_pattern {config.date_pattern!r}); set rasters.date")
    text = match["date"].replace("-", "")
    try:
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"{match['date']!r} in the file name is not a date (YYYYMMDD or YYYY-MM-DD)") from None


def raster_scene(file: SourceFile, config: RasterImagerySettings) -> Scene:
    when = acquisition_date(file.name, config)
    return Scene(raster_id(file.name), datetime(when.year, when.month, when.day, tzinfo=timezone.utc), RASTER_LEVEL,
                 {band: file.location for band in config.bands}, file.location, band_index=dict(config.bands),
                 radiometry=(config.scale, config.offset, config.nodata), rgb=config.rgb_bands)


def build_raster_catalog(settings_json: dict, config: RasterImagerySettings, files: list[SourceFile],
                         version_of: Callable[[str], str]) -> SceneCatalog:
    """The scene catalog of a rasters location's files (versioned): one scene per raster file, its "tile" the
    file's id. Files without a usable date are listed in ``rejected`` with the reason; two files with one id
    and date keep the later-listed name and list the other as superseded."""
    known = {f.location: f.version for f in files if f.version}
    scenes: dict[tuple[str, str], Scene] = {}
    rejected: dict[str, str] = {}
    superseded: list[str] = []
    for f in sorted(files, key=lambda f: f.name):
        if not is_raster_file(f.name, config):
            continue
        try:
            scene = raster_scene(f, config)
        except ValueError as exc:
            rejected[f.name] = str(exc)
            continue
        key = (scene.tile, scene.date)
        if key in scenes:
            superseded.append(scenes[key].source)
        scenes[key] = scene.with_versions(lambda location: known.get(location) or version_of(location))
    ordered = [scenes[k] for k in sorted(scenes)]
    return SceneCatalog(settings=settings_json, tiles=sorted({s.tile for s in ordered}), scenes=ordered,
                        rejected=rejected, superseded=superseded, files={f.name: (f.fingerprint, f.version) for f in files})
