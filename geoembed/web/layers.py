"""What the map draws: a product's cells coloured by their embedding, at the resolution a view can hold.

The colours are the Dagster map's (``principal_rgb``: 3 principal components of the embeddings as RGB,
over the same rows). A browser cannot draw a global res-5 product (878,538 hexagons) at once, so the
layer is a pyramid: every coarser H3 resolution holds the parents of the product's cells, coloured by
the mean colour of their children. A view gets the finest resolution whose cells in the view fit its
budget: whole continents as coarse cells, the product's own cells once the user has zoomed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import h3.api.basic_int as h3i
import numpy as np

from geoembed.core.evaluation import principal_rgb
from geoembed.core.grids.h3 import cell_centres, parent_cells
from geoembed.core.grids.mgrs import ChipRef, chip_footprints
from geoembed.core.sinks.pgvector import TableEmbeddings

MAX_VIEW_CELLS = 12_000  # hexagons per view: a few hundred kB gzipped, drawn in well under a second
MAX_VIEW_CHIPS = 5_000  # chip footprints per view


@dataclass(frozen=True)
class LayerLevel:
    """The layer's cells at one H3 resolution (sorted ids), with their colours and centres."""

    resolution: int
    cells: np.ndarray  # uint64
    rgb: np.ndarray  # (n, 3) uint8
    lon: np.ndarray  # float32 centres
    lat: np.ndarray
    margin: float  # degrees: how far a cell reaches beyond its centre (an edge, with room to spare)


@dataclass(frozen=True)
class LayerView:
    resolution: int
    cells: np.ndarray
    rgb: np.ndarray
    cells_in_product: int  # at the product's own resolution, inside the view


@dataclass(frozen=True)
class Bbox:
    """West, south, east, north in degrees; west > east crosses the antimeridian."""

    west: float
    south: float
    east: float
    north: float

    def contains(self, lon: np.ndarray, lat: np.ndarray, margin: float) -> np.ndarray:
        inside_lat = (lat >= self.south - margin) & (lat <= self.north + margin)
        if self.east - self.west >= 360 - 2 * margin:
            return inside_lat
        west = (self.west - margin + 180) % 360 - 180
        east = (self.east + margin + 180) % 360 - 180
        inside_lon = (lon >= west) & (lon <= east) if west <= east else (lon >= west) | (lon <= east)
        return inside_lat & inside_lon


WORLD = Bbox(-180.0, -90.0, 180.0, 90.0)


class ColourLayer:
    """A product table's colour pyramid, from its embeddings (built once per table, then only read)."""

    def __init__(self, cells: np.ndarray, rgb: np.ndarray, resolution: int):
        order = np.argsort(cells)
        cells = np.asarray(cells, dtype=np.uint64)[order]
        colours = np.asarray(rgb, dtype=np.float32)[order]
        self.resolution = resolution
        self.levels: list[LayerLevel] = []
        for res in range(resolution + 1):
            parents, first, inverse = np.unique(parent_cells(cells, res), return_index=True, return_inverse=True)
            counts = np.bincount(inverse)
            mean = np.stack([np.bincount(inverse, weights=colours[:, i]) for i in range(3)], axis=1) / counts[:, None]
            lat, lon = cell_centres(parents)
            self.levels.append(LayerLevel(res, parents, np.round(mean * 255).astype(np.uint8),
                                          lon.astype(np.float32), lat.astype(np.float32),
                                          margin=2.0 * h3i.average_hexagon_edge_length(res, unit="km") / 111.0))

    @classmethod
    def from_embeddings(cls, embeddings: TableEmbeddings, resolution: int) -> "ColourLayer":
        """The Dagster map's colours (PCA of every row's embedding, each distinct vector weighted by its rows)."""
        rgb = principal_rgb(embeddings.vectors, embeddings.counts)[embeddings.vector_index]
        return cls(embeddings.keys.astype(np.uint64), rgb, resolution)

    def colours(self, cells: np.ndarray) -> np.ndarray:
        """The colours (uint8 RGB) of some of the product's own cells (they must be in the layer)."""
        level = self.levels[-1]
        return level.rgb[np.searchsorted(level.cells, np.asarray(cells, dtype=np.uint64))]

    def view(self, bbox: Bbox = WORLD, max_cells: int = MAX_VIEW_CELLS) -> LayerView:
        """The finest level whose cells in ``bbox`` number at most ``max_cells`` (the coarsest otherwise)."""
        in_product, chosen = 0, None
        for level in reversed(self.levels):
            inside = bbox.contains(level.lon, level.lat, level.margin)
            count = int(inside.sum())
            if level is self.levels[-1]:
                in_product = count
            chosen = (level, inside)
            if count <= max_cells:
                break
        level, inside = chosen
        return LayerView(level.resolution, level.cells[inside], level.rgb[inside], in_product)


@dataclass(frozen=True)
class ChipView:
    chips: list[dict]  # GeoJSON features: footprint, chip reference, colour
    chips_in_view: int  # before the budget


class ChipLayer:
    """An imagery product table's chips for the map: each place's newest chip, its footprint, and the
    colour of its embedding (PCA as RGB over every row of the table, as for cells)."""

    def __init__(self, embeddings: TableEmbeddings, chip_size: int):
        from shapely.geometry import mapping

        rgb = principal_rgb(embeddings.vectors, embeddings.counts)[embeddings.vector_index]
        keys = embeddings.keys  # sorted: place-major, then day, so a place's last row is its newest
        places = keys >> 16
        newest = np.nonzero(np.append(places[1:] != places[:-1], True))[0]
        self.keys = keys[newest]
        self.rgb = np.round(rgb[newest] * 255).astype(np.uint8)
        footprints = chip_footprints(self.keys, chip_size)
        centres = np.array([f.centroid.coords[0] for f in footprints]).reshape(-1, 2)
        self.lon, self.lat = centres[:, 0], centres[:, 1]
        self.margin = chip_size * 10.0 / 111_000.0 * 2  # degrees, a chip's reach past its centre
        self.geometries = [mapping(f) for f in footprints]
        self.refs = [ChipRef.from_key(int(k)) for k in self.keys]

    def view(self, bbox: Bbox = WORLD, max_chips: int = MAX_VIEW_CHIPS) -> ChipView:
        inside = np.nonzero(bbox.contains(self.lon, self.lat, self.margin))[0]
        features = [{"type": "Feature", "geometry": self.geometries[i],
                     "properties": {"chip": str(self.refs[i]), "tile": self.refs[i].tile, "date": self.refs[i].date,
                                    "chip_id": self.refs[i].chip_id, "colour": "#" + self.rgb[i].tobytes().hex()}}
                    for i in inside[:max_chips]]
        return ChipView(features, len(inside))
