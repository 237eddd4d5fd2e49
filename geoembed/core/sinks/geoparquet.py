"""GeoParquet files (geometry as WKB in OGC:CRS84, with the "geo" metadata GeoParquet 1.1 defines),
written whole or streamed in row groups so memory does not grow with the number of rows. Locally a
file appears only once complete (written beside it, then renamed); on an object store it is one upload.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from geoembed.core.sinks.zarr import StorePath, is_remote, storage_options

GEOPARQUET_VERSION = "1.1.0"


def crs84_projjson() -> dict:
    from pyproj import CRS

    return CRS("OGC:CRS84").to_json_dict()


def geo_metadata(geometry_types: Iterable[str], bbox: list[float] | None, column: str = "geometry") -> dict:
    """The "geo" key of a GeoParquet file with one WKB geometry column in OGC:CRS84."""
    spec = {"encoding": "WKB", "geometry_types": sorted(set(geometry_types)), "crs": crs84_projjson(),
            "edges": "planar"}
    if bbox is not None:
        spec["bbox"] = [float(v) for v in bbox]
    return {"version": GEOPARQUET_VERSION, "primary_column": column, "columns": {column: spec}}


def wkb_column(geometries: np.ndarray) -> pa.Array:
    return pa.array(shapely.to_wkb(np.asarray(geometries, dtype=object)), type=pa.binary())


def total_bounds(geometries: np.ndarray) -> list[float] | None:
    if len(geometries) == 0:
        return None
    b = shapely.bounds(np.asarray(geometries, dtype=object))
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


class GeoParquetWriter:
    """Streams row groups into one GeoParquet file. Its "geo" metadata goes into the schema, so the
    geometry types and the bbox (optional in GeoParquet) are given up front: footprints are small and
    known before the payload (e.g. embeddings) is computed."""

    def __init__(self, path: StorePath, schema: pa.Schema, geometry_types: Iterable[str],
                 bbox: list[float] | None = None, metadata: dict[str, str] | None = None,
                 compression: str = "zstd", column: str = "geometry"):
        self.path = path
        self.rows = 0
        extra = {**{k.encode(): v.encode() for k, v in (metadata or {}).items()},
                 b"geo": json.dumps(geo_metadata(geometry_types, bbox, column)).encode()}
        self.schema = schema.with_metadata({**(schema.metadata or {}), **extra})
        if is_remote(path):
            import fsspec

            self._handle = fsspec.open(str(path), "wb", **storage_options(path)).open()
            self._tmp = None
            sink = self._handle
        else:
            final = Path(path)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
            self._handle = None
            sink = str(self._tmp)
        self._writer = pq.ParquetWriter(sink, self.schema, compression=compression)

    def write(self, table: pa.Table) -> None:
        """One row group."""
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        if self._handle is not None:
            self._handle.close()
        else:
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if self._handle is not None:
                self._handle.close()
            elif self._tmp is not None and Path(self._tmp).exists():
                os.remove(self._tmp)

    def __enter__(self) -> GeoParquetWriter:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_geoparquet(path: StorePath, table: pa.Table, geometries: np.ndarray,
                     metadata: dict[str, str] | None = None) -> None:
    """A whole table as one GeoParquet file (``geometries``: the shapely geometries of its WKB column)."""
    types = {g.geom_type for g in geometries} or {"Polygon"}
    with GeoParquetWriter(path, table.schema, types, total_bounds(geometries), metadata) as writer:
        writer.write(table)
