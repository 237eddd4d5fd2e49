"""Categorical rasters: validate a land-cover source and resolve its legend.

Every error names the raster and the problem, so a bad input fails before anything is written.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from geoembed.core.rasters import RasterInfo, RasterInputError, failing_reads, open_raster
from geoembed.landcover.settings import ProductSettings

BUILTIN_LEGENDS = ("igbp", "nlcd")


def describe_raster(location: str, nodata_override: float | None = None, kind: str = "categorical") -> RasterInfo:
    """Validate that the raster is a single-band raster with a CRS (integer for a categorical source),
    and describe it."""
    with open_raster(location) as src:
        if src.count != 1:
            raise RasterInputError(f"raster {location!r} has {src.count} bands; a {kind} source needs exactly 1")
        dtype = src.dtypes[0]
        if kind == "continuous":
            if src.crs is None:
                raise RasterInputError(f"raster {location!r} has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
            if src.transform.b != 0 or src.transform.d != 0:
                raise RasterInputError(f"raster {location!r} is rotated; warp it to a north-up grid first")
            nodata = nodata_override if nodata_override is not None else src.nodata
            return RasterInfo(location=location, width=src.width, height=src.height, transform=src.transform,
                              crs=src.crs, nodata=None if nodata is None else float(nodata), dtype=dtype)
        if not np.issubdtype(np.dtype(dtype), np.integer):
            raise RasterInputError(
                f"raster {location!r} has data type {dtype}; a categorical source needs an integer type"
            )
        if src.crs is None:
            raise RasterInputError(f"raster {location!r} has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
        if src.transform.b != 0 or src.transform.d != 0:
            raise RasterInputError(f"raster {location!r} is rotated; warp it to a north-up grid first")
        nodata = nodata_override if nodata_override is not None else src.nodata
        if nodata is not None and not float(nodata).is_integer():
            raise RasterInputError(f"raster {location!r} has a non-integer nodata value {nodata}")
        return RasterInfo(
            location=location,
            width=src.width,
            height=src.height,
            transform=src.transform,
            crs=src.crs,
            nodata=None if nodata is None else int(nodata),
            dtype=dtype,
        )


def parse_legend_text(text: str) -> dict[int, str]:
    """Parse a 'value name' per line legend (the WorldCover 'legend' tag format)."""
    legend: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].lstrip("-").isdigit():
            legend[int(parts[0])] = parts[1].strip()
    return legend


def resolve_legend(
    settings: ProductSettings, distinct_values: np.ndarray | None = None, location: str | None = None
) -> dict[int, str]:
    """The product's legend as {class value: name}, sorted by value.

    With no legend configured, each distinct value in the raster becomes a class named by its value
    (``distinct_values`` must then be given). ``location``: the raster a 'tag:' legend is read from
    (default: the product's raster)."""
    spec = settings.legend
    location = location or settings.raster_location
    if isinstance(spec, dict):
        legend = {int(k): str(v) for k, v in spec.items()}
    elif spec is None:
        if distinct_values is None:
            raise ValueError("distinct_values are needed to build a legend from the raster's values")
        legend = {int(v): str(int(v)) for v in distinct_values}
    elif spec.startswith("tag:"):
        tag = spec[len("tag:") :]
        with open_raster(location) as src:
            text = src.tags().get(tag) or src.tags(1).get(tag)
        if not text:
            raise RasterInputError(f"raster {location!r} has no metadata tag {tag!r} to read the legend from")
        legend = parse_legend_text(text)
        if not legend:
            raise RasterInputError(f"raster {location!r}: tag {tag!r} holds no 'value name' lines")
    elif spec in BUILTIN_LEGENDS:
        text = resources.files("geoembed.landcover").joinpath(f"legends/{spec}.json").read_text()
        legend = {int(k): v for k, v in json.loads(text).items()}
    else:
        path = Path(spec)
        if not path.exists():
            raise RasterInputError(
                f"legend {spec!r} is neither a built-in legend {BUILTIN_LEGENDS}, 'tag:<name>', nor an existing file"
            )
        try:
            legend = {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as exc:
            raise RasterInputError(f"legend file {spec!r} must be a JSON object {{value: name}}: {exc}") from None
    if settings.nodata is not None:
        legend.pop(settings.nodata, None)
    if not legend:
        raise RasterInputError(f"the legend for raster {location!r} has no classes")
    if len(legend) > 254:
        raise RasterInputError(f"the legend for raster {location!r} has {len(legend)} classes; at most 254 are supported")
    return dict(sorted(legend.items()))


def distinct_values(location: str, nodata: int | None, max_pixels: int = 400_000_000) -> np.ndarray:
    """Distinct non-nodata values of a raster, scanning it block by block (exact, bounded memory)."""
    found: set[int] = set()
    with open_raster(location) as src:
        if src.width * src.height > max_pixels:
            raise RasterInputError(
                f"raster {location!r} has {src.width * src.height:,} pixels; give a legend instead of scanning it"
            )
        for _, window in src.block_windows(1):
            with failing_reads(f"raster {location!r}"):
                block = src.read(1, window=window)
            found.update(int(v) for v in np.unique(block))
    if nodata is not None:
        found.discard(nodata)
    return np.array(sorted(found), dtype=np.int64)

