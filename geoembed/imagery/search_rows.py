"""Chip embeddings as rows of a PostgreSQL chip table (the same loader as the H3 tables): the chip key,
the scene (the partition whose rows are replaced together), the H3 cell of the chip's centre (area
filters), the place (the same ground on every date), footprint and lineage."""

from __future__ import annotations

import h3.api.basic_int as h3i
import numpy as np
import pyarrow as pa
import shapely
import xarray as xr

from geoembed.core.grids.mgrs import chip_key, place_key, scene_key
from geoembed.core.sinks.pgvector import TableRows

# Area filters without PostGIS select chips by the H3 cell of their centre: res 9 cells (~0.1 km2) are
# far smaller than a chip (2.56 km at 256 px), so a chip is in an area when its centre is.
CHIP_H3_RESOLUTION = 9


def chip_rows(tile: str, date: str, embeddings: xr.Dataset, chips: pa.Table, source: str) -> TableRows:
    """The rows of one tile x date: ``embeddings`` (its chip embeddings store), ``chips`` (its chip
    table, for footprints), ``source`` (where the pixels are: the datacube)."""
    ids = [str(c) for c in embeddings["chip_id"].values]
    rows, cols = embeddings["row"].values.astype(int), embeddings["col"].values.astype(int)
    by_id = {c: i for i, c in enumerate(chips["chip_id"].to_pylist())}
    order = np.array([by_id[c] for c in ids], dtype=np.int64)
    footprints = shapely.from_wkb(np.asarray(chips["geometry"].to_pylist(), dtype=object)[order]) if len(ids) else []
    centres = shapely.centroid(np.asarray(footprints, dtype=object)) if len(ids) else []
    lon = np.array([p.x for p in centres], dtype=np.float64)
    lat = np.array([p.y for p in centres], dtype=np.float64)

    def geometry() -> list[bytes]:
        return [shapely.to_wkb(f, include_srid=True) for f in shapely.set_srid(np.asarray(footprints, dtype=object),
                                                                               4326)]

    return TableRows(
        partition=scene_key(tile, date),
        keys=np.array([chip_key(tile, date, r, c) for r, c in zip(rows, cols)], dtype=np.int64),
        lon=lon, lat=lat, embedding=embeddings["embedding"].values,
        model_version=str(embeddings.attrs["model_version"]),
        source_version=str(embeddings.attrs["scene_version"]),
        geometry=geometry,
        extra={"h3": np.array([h3i.latlng_to_cell(y, x, CHIP_H3_RESOLUTION) for x, y in zip(lon, lat)],
                              dtype=np.uint64).astype(np.int64),
               "place": np.array([place_key(tile, r, c) for r, c in zip(rows, cols)], dtype=np.int64),
               "tile": [tile] * len(ids), "acquired": np.full(len(ids), np.datetime64(date, "D")),
               "chip_id": ids},
    )
