"""Opening source rasters (local files, object stores) and listing a product's source files."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import dagster as dg
import rasterio
from dagster_aws.s3 import S3Resource
from pydantic import Field

from geoembed.core import sources
from geoembed.core.lineage import content_version
from geoembed.core.rasters import RasterInfo, RasterInputError, open_raster
from geoembed.landcover.categorical import describe_raster
from geoembed.landcover.settings import ProductSettings


class RasterReader(dg.ConfigurableResource):
    """Reads categorical rasters; ``gdal_options`` reach GDAL (e.g. AWS_NO_SIGN_REQUEST for public buckets).
    ``s3`` (dagster-aws) lists s3:// landing locations; credentials come from the environment."""

    gdal_options: dict[str, str] = Field(default_factory=dict, description="GDAL configuration options.")
    s3: S3Resource = Field(default_factory=S3Resource, description="Object store client for s3:// landing locations.")

    @contextmanager
    def open(self, location: str) -> Iterator[rasterio.DatasetReader]:
        with rasterio.Env(**self.gdal_options), open_raster(location) as src:
            yield src

    def describe(self, location: str, nodata_override: int | None = None) -> RasterInfo:
        with rasterio.Env(**self.gdal_options):
            return describe_raster(location, nodata_override)

    def version(self, location: str) -> str:
        return content_version(location)

    def list_files(self, settings: ProductSettings) -> list[sources.SourceFile]:
        """The product's source files, unversioned (a cheap listing: names, sizes, modification times)."""
        if settings.landing is None:
            location = settings.raster_location
            name = os.path.basename(location.rstrip("/")) or location
            if "://" in location or location.startswith("/vsi"):
                return [sources.SourceFile(name, location, 0, 0, etag=content_version(location))]
            if not os.path.exists(location):
                raise RasterInputError(f"raster {location!r} does not exist")
            stat = os.stat(location)
            return [sources.SourceFile(name, location, stat.st_size, stat.st_mtime_ns)]
        if settings.landing.startswith("s3://"):
            return sources.list_s3(self.s3.get_client(), settings.landing, settings.landing_pattern)
        return sources.list_local(settings.landing, settings.landing_pattern)

    def source_files(self, settings: ProductSettings, known: dict[str, tuple[str, str]] | None = None) -> list[sources.SourceFile]:
        """The product's source files with content versions (only files whose fingerprint is not in
        ``known`` are read)."""
        return sources.with_versions(self.list_files(settings), known or {})
