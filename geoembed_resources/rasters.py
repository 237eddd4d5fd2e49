"""Opening source rasters (local files, object stores) and listing a product's source files."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import dagster as dg
import rasterio
from dagster_aws.s3 import S3Resource
from pydantic import Field

from geoembed.core import sources
from geoembed.core.lineage import content_version
from geoembed.core.rasters import RasterInfo, RasterInputError, open_raster
from geoembed.landcover.categorical import describe_raster
from geoembed.landcover.stencil import STACK_PREFIX
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

    def describe(self, location: str, nodata_override: float | None = None, kind: str = "categorical") -> RasterInfo:
        with rasterio.Env(**self.gdal_options):
            return describe_raster(location, nodata_override, kind)

    def version(self, location: str) -> str:
        return content_version(location)

    def list_location(self, location: str, pattern: str = "*", recursive: bool = False) -> list[sources.SourceFile]:
        """The files of a location, unversioned (a cheap listing: names, sizes, modification times): one
        file (local or a URL), a local directory, or an s3:// prefix."""
        if location.startswith("s3://") and not os.path.splitext(location.rstrip("/"))[1]:  # a prefix
            return sources.list_s3(self.s3.get_client(), location, pattern, recursive)
        if "://" in location or location.startswith("/vsi"):
            name = os.path.basename(location.rstrip("/")) or location
            return sources.Listing([sources.SourceFile(name, location, 0, 0, etag=content_version(location))])
        if os.path.isdir(location):
            return sources.list_local(location, pattern, recursive)
        if not os.path.exists(location):
            raise RasterInputError(f"raster {location!r} does not exist")
        stat = os.stat(location)
        return sources.Listing([sources.SourceFile(os.path.basename(location), location, stat.st_size,
                                                   stat.st_mtime_ns)])

    def list_files(self, settings: ProductSettings) -> list[sources.SourceFile]:
        """A land-cover product's source files: its raster, or the files of its landing location."""
        if settings.landing is None:
            return self.list_location(settings.raster_location)
        if settings.landing.startswith("s3://"):
            return sources.list_s3(self.s3.get_client(), settings.landing, settings.landing_pattern)
        return sources.list_local(settings.landing, settings.landing_pattern)

    def read_text(self, location: str) -> str:
        """A small text file (a STAC item), local or on an object store."""
        if "://" in location:
            import fsspec

            from geoembed.core.sinks.zarr import storage_options

            with fsspec.open(location, "r", **storage_options(location)) as handle:
                return handle.read()
        with open(location, encoding="utf-8") as handle:
            return handle.read()

    def mirror(self, location: str, folder: str | os.PathLike[str]) -> str:
        """A local folder holding the files of ``location``: the location itself when it is local; for an
        s3:// prefix, ``folder``, brought up to date (objects new or changed since the last mirror are
        downloaded, local files whose object is gone are removed)."""
        if not location.startswith("s3://"):
            return location
        client = self.s3.get_client()
        root = Path(folder)
        manifest_path = root / ".mirror.json"
        known = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        listing = sources.list_s3(client, location, "*", recursive=True)
        for f in listing:
            target = root / f.name
            if known.get(f.name) != f.fingerprint or not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                bucket, key = f.location[5:].split("/", 1)
                client.download_file(bucket, key, str(target) + ".part")
                os.replace(str(target) + ".part", target)
        names = {f.name for f in listing}
        for name in set(known) - names:
            (root / name).unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps({f.name: f.fingerprint for f in listing}))
        return str(root)

    def watched_files(self, settings: ProductSettings) -> list[sources.SourceFile]:
        """The product's source files and its stacked sources (named 'stack/<name>'), unversioned: what the
        landing sensor compares with the stencil's (a change to a stacked source refreshes every region)."""
        listed = self.list_files(settings)
        files = sources.Listing(listed, rejected=getattr(listed, "rejected", {}))
        for source in settings.stack:
            files += [replace(f, name=f"{STACK_PREFIX}{source.name}")
                      for f in self.list_location(source.raster_location)]
        return files

    def fingerprints(self, settings: ProductSettings) -> dict[str, str]:
        """{file name: fingerprint} of the product's source files as they are now, stacked sources included
        (a cheap listing; readers compare it with the stencil's to refuse files changed since)."""
        return {f.name: f.fingerprint for f in self.watched_files(settings)}

    def stacked_files(self, settings: ProductSettings, known: dict[str, tuple[str, str]] | None = None
                      ) -> list[sources.SourceFile]:
        """The product's stacked sources in product order, each as one versioned file named
        'stack/<source name>' (a missing or unreadable file is an error naming the source)."""
        files = []
        for source in settings.stack:
            listing = self.list_location(source.raster_location)
            if len(listing) != 1:
                raise RasterInputError(f"stacked source {source.name!r}: {source.raster!r} must be one raster file")
            entry = replace(listing[0], name=f"{STACK_PREFIX}{source.name}")
            versioned = sources.with_versions([entry], known or {})
            if not versioned:
                raise RasterInputError(f"stacked source {source.name!r}: {source.raster!r} cannot be read: "
                                       f"{versioned.rejected.get(entry.name, '')}")
            files.append(versioned[0])
        return files

    def source_files(self, settings: ProductSettings, known: dict[str, tuple[str, str]] | None = None) -> list[sources.SourceFile]:
        """The product's source files with content versions (only files whose fingerprint is not in
        ``known`` are read)."""
        return sources.with_versions(self.list_files(settings), known or {})
