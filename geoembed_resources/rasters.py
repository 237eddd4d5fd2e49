"""Opening source rasters (local files or URIs) with the GDAL options of the deployment."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import dagster as dg
import rasterio
from pydantic import Field

from geoembed.raster import RasterInfo, content_version, describe_raster, open_raster


class RasterReader(dg.ConfigurableResource):
    """Reads categorical rasters; ``gdal_options`` reach GDAL (e.g. AWS_NO_SIGN_REQUEST for public buckets)."""

    gdal_options: dict[str, str] = Field(default_factory=dict, description="GDAL configuration options.")

    @contextmanager
    def open(self, location: str) -> Iterator[rasterio.DatasetReader]:
        with rasterio.Env(**self.gdal_options), open_raster(location) as src:
            yield src

    def describe(self, location: str, nodata_override: int | None = None) -> RasterInfo:
        with rasterio.Env(**self.gdal_options):
            return describe_raster(location, nodata_override)

    def version(self, location: str) -> str:
        return content_version(location)
