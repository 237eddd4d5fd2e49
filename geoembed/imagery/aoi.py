"""Areas of interest: the Sentinel-2 tiles an area touches (from the published grid, so tiles ESA does
not publish are never named), and GeoJSON grids of a tile's chips for front ends (SageMaker GeoFM's
``chip_grid_aoi.geojson`` and ``chip_grid_full_s2_tile.geojson``)."""

from __future__ import annotations

import shapely
from shapely.geometry import MultiPolygon, mapping

from geoembed.core.geometry import GeometryInputError, area_of_interest, boxes_lonlat
from geoembed.core.grids.mgrs import published_grid
from geoembed.imagery.chips import ChipGrid, chip_ids


def tiles_for_area(area: MultiPolygon, description: str = "the area of interest") -> list[str]:
    """Ids of the published Sentinel-2 tiles the area touches (parts across the antimeridian included)."""
    tiles = sorted({t for part in area.geoms for t in published_grid().tiles_intersecting(part)})
    if not tiles:
        raise GeometryInputError(f"{description} touches no Sentinel-2 tile (bounds "
                                 f"{[round(v, 4) for v in area.bounds]})")
    return tiles


def tiles_for_geojson(value: str | dict) -> list[str]:
    area = area_of_interest(value)
    return tiles_for_area(area, "the GeoJSON area of interest")


def chip_grid_geojson(grid: ChipGrid, area: MultiPolygon | None = None, classes: dict[str, str] | None = None) -> dict:
    """The tile's chips as a FeatureCollection of lon/lat polygons (only those touching ``area`` when
    given), with tile, chip id, row, col and, when known, the chip's no-data class."""
    rows, cols = grid.all_chips()
    footprints = boxes_lonlat(grid.chip_bounds(rows, cols), grid.tile.crs)
    if area is not None:
        keep = shapely.intersects(footprints, area)
        rows, cols, footprints = rows[keep], cols[keep], footprints[keep]
    ids = chip_ids(rows, cols)
    features = [{
        "type": "Feature",
        "geometry": mapping(footprint),
        "properties": {"tile": grid.tile.tile_id, "chip_id": str(cid), "row": int(r), "col": int(c),
                       **({"nodata_class": classes.get(str(cid), "no_data")} if classes is not None else {})},
    } for cid, r, c, footprint in zip(ids, rows, cols, footprints)]
    return {"type": "FeatureCollection", "features": features,
            "properties": {"tile": grid.tile.tile_id, "chip_size": grid.chip_size, "crs": grid.tile.crs}}


__all__ = ["area_of_interest", "chip_grid_geojson", "tiles_for_area", "tiles_for_geojson"]
