"""Rasters of any kind: open one (errors name it) and describe its grid.

Pipelines validate what their rasters must be (one categorical band, the bands of a scene) on top."""

from __future__ import annotations

import functools
import math
import threading
from contextlib import contextmanager
from typing import Iterator
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
    nodata: int | float | None  # float only for continuous sources
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


# ---------------------------------------------------------------------------------------------
# GDAL errors that do not raise
# ---------------------------------------------------------------------------------------------
# Some GDAL drivers only log a decoding failure and return zeros (JP2OpenJPEG on a truncated file logs
# "Stream too short" from its decoding threads, and rasterio returns an array). ``failing_reads``
# installs a process-wide GDAL error handler for the duration of a read, so such errors raise.

_CE_FAILURE = 3
_handler_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _gdal_library():
    """rasterio's libgdal through ctypes (None when it cannot be found: reads then raise only what
    rasterio raises)."""
    import ctypes
    import ctypes.util
    import glob
    import os

    candidates = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*"))
    name = candidates[0] if candidates else ctypes.util.find_library("gdal")
    if not name:
        return None
    library = ctypes.CDLL(name)
    library.CPLSetErrorHandler.restype = ctypes.c_void_p
    library.CPLSetErrorHandler.argtypes = [ctypes.c_void_p]
    return library


def _read_error(what: str, exc: BaseException) -> RasterInputError:
    """The input error for a read that raised: the deepest message (rasterio's own says only "Read
    failed. See previous exception for details.")."""
    messages = []
    while exc is not None:
        messages.append(str(exc).strip())
        exc = exc.__cause__ or exc.__context__
    detail = next((m for m in reversed(messages) if m and "See previous exception" not in m), messages[0])
    return RasterInputError(f"{what} cannot be read: {detail}")


@contextmanager
def failing_reads(what: str) -> Iterator[None]:
    """Reads inside the block raise ``RasterInputError`` naming ``what`` when GDAL reports a failure:
    an error rasterio raises, or one a driver only logged."""
    import ctypes

    library = _gdal_library()
    if library is None:
        try:
            yield
        except rasterio.errors.RasterioError as exc:
            raise _read_error(what, exc) from None
        return
    failures: list[str] = []
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_char_p)

    def record(error_class: int, number: int, message: bytes) -> None:
        if error_class >= _CE_FAILURE:
            failures.append((message or b"").decode(errors="replace").strip())

    handler = handler_type(record)
    with _handler_lock:
        previous = library.CPLSetErrorHandler(ctypes.cast(handler, ctypes.c_void_p))
        try:
            yield
        except rasterio.errors.RasterioError as exc:
            raise _read_error(what, exc) from None
        finally:
            library.CPLSetErrorHandler(previous)
    if failures:
        raise RasterInputError(f"{what} cannot be read: {failures[0]}"
                               + (f" (and {len(failures) - 1} more errors)" if len(failures) > 1 else ""))
