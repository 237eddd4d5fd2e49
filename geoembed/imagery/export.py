"""Clay-layout GeoParquet: one file per MGRS tile, ``{MGRS}_{MINDATE}_{MAXDATE}_v{VERSION}.gpq``, with
columns ``source_url`` (string), ``date`` (date32), ``embeddings`` (FixedShapeTensor of the class-level
vector) and ``geometry`` (WKB polygon of the chip, OGC:CRS84), GeoParquet "geo" metadata, one row group
per date (memory stays at one date's chips whatever the tile holds). Lineage (model version, scene
versions, chip ids) is in the file's key-value metadata.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from geoembed.core.sinks.geoparquet import GeoParquetWriter, total_bounds, wkb_column
from geoembed.core.sinks.zarr import StorePath


def clay_file_name(tile: str, dates: Iterable[str], version: int) -> str:
    days = sorted(dates)
    if not days:
        raise ValueError(f"tile {tile}: no dates to name a file after")
    return f"{tile}_{days[0].replace('-', '')}_{days[-1].replace('-', '')}_v{version:03d}.gpq"


@dataclass
class DateRows:
    """One date's chips of a tile, ready to write."""

    date: str
    source_url: list[str]  # per chip: where its pixels are (the datacube store and the chip)
    embeddings: np.ndarray  # (n, dim) float32
    footprints: np.ndarray  # lon/lat shapely polygons
    scene_version: str
    chip_id: list[str]


def clay_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("source_url", pa.string()),
        pa.field("date", pa.date32()),
        pa.field("embeddings", pa.fixed_shape_tensor(pa.float32(), (dim,))),
        pa.field("geometry", pa.binary()),
    ])


def write_tile_geoparquet(path: StorePath, dim: int, dates: Iterator[DateRows], footprints: np.ndarray,
                          metadata: dict[str, str]) -> dict:
    """Stream a tile's dates into one GeoParquet file. ``footprints``: every chip footprint the file
    will hold (for the bbox and geometry types, which go in the schema). Returns what was written."""
    written = {"rows": 0, "dates": [], "scene_versions": {}, "chips_per_date": {}}
    types = {g.geom_type for g in footprints} or {"Polygon"}
    schema = clay_schema(dim)
    with GeoParquetWriter(path, schema, types, total_bounds(footprints), metadata) as writer:
        for rows in dates:
            n = len(rows.source_url)
            table = pa.table({
                "source_url": pa.array(rows.source_url, pa.string()),
                "date": pa.array([dt.date.fromisoformat(rows.date)] * n, pa.date32()),
                "embeddings": pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(rows.embeddings,
                                                                                               dtype=np.float32)),
                "geometry": wkb_column(rows.footprints),
            }, schema=schema)
            writer.write(table)
            written["rows"] += n
            written["dates"].append(rows.date)
            written["scene_versions"][rows.date] = rows.scene_version
            written["chips_per_date"][rows.date] = n
    return written


def lineage_metadata(model_version: str, encoder: dict, scene_versions: dict[str, str]) -> dict[str, str]:
    return {"geoembed:model_version": model_version, "geoembed:encoder": json.dumps(encoder),
            "geoembed:scene_versions": json.dumps(scene_versions),
            "geoembed:embeddings": "class-level chip embedding (ChipNet: unit norm; Clay: the class token)"}
