"""Rasters of any kind: open one (errors name it) and describe its grid.

Pipelines validate what their rasters must be (one categorical band, the bands of a scene) on top."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import rasterio
import rasterio.errors
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from geoembed.core.errors import InputError


class RasterInputError(InputError):
    """A raster cannot be used as the pipeline needs it (missing, unreadable, wrong kind)."""


@dataclass(frozen=True)
class RasterInfo:
    """What the sampler needs to know about a raster, independent of an open file handle."""

    location: str
    width: int
    height: int
    transform: Affine
    crs: CRS
    nodata: int | None
    dtype: str

    @property
    def is_global_geographic(self) -> bool:
        """A geographic raster spanning all longitudes: columns wrap at the antimeridian and rows
        reflect across the poles."""
        if not self.crs.is_geographic:
            return False
        span = abs(self.transform.a) * self.width
        return math.isclose(span, 360.0, rel_tol=1e-6) and self.transform.b == 0 and self.transform.d == 0

    @property
    def reaches_poles(self) -> bool:
        top = self.transform.f
        bottom = top + self.transform.e * self.height
        return self.is_global_geographic and math.isclose(top, 90.0, abs_tol=1e-6) and math.isclose(
            bottom, -90.0, abs_tol=1e-6
        )

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in EPSG:4326; west > east when the raster crosses the antimeridian."""
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        bottom = top + self.transform.e * self.height
        if self.is_global_geographic:
            return (-180.0, max(-90.0, min(top, bottom)), 180.0, min(90.0, max(top, bottom)))
        return transform_bounds(self.crs, "EPSG:4326", min(left, right), min(top, bottom),
                                max(left, right), max(top, bottom), densify_pts=21)


def open_raster(location: str) -> rasterio.DatasetReader:
    """Open a raster, turning rasterio's errors into one that names the input."""
    if "://" not in location and not location.startswith("/vsi") and not Path(location).exists():
        raise RasterInputError(f"raster {location!r} does not exist")
    try:
        return rasterio.open(location)
    except rasterio.errors.RasterioIOError as exc:
        raise RasterInputError(f"raster {location!r} cannot be read: {exc}") from None
