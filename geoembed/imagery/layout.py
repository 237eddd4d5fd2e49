"""Where an imagery product's outputs go, below its outputs folder (local or an object-store prefix)
and its working folder (local)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageryLayout:
    outputs: object  # Path or UPath: the product's published outputs
    work: Path  # the product's working data

    @property
    def catalog(self) -> Path:
        return self.work / "scene_catalog.json"

    def datacube(self, tile: str, date: str):
        return self.outputs / "datacubes" / tile / f"{date}.zarr"

    def chip_table(self, tile: str, date: str):
        return self.outputs / "chips" / tile / f"{date}.parquet"

    def thumbnail(self, tile: str, date: str, chip_id: str):
        return self.outputs / "thumbnails" / tile / date / f"{chip_id}.png"

    def embeddings(self, model_version: str, tile: str, date: str):
        return self.outputs / "embeddings" / model_version / tile / f"{date}.zarr"

    def change_table(self, model_version: str, tile: str):
        return self.outputs / "change" / model_version / f"{tile}.parquet"

    def change_plot(self, model_version: str, tile: str):
        return self.outputs / "change" / model_version / f"{tile}.png"

    @property
    def geoparquet(self):
        return self.outputs / "geoparquet"

    @property
    def geoparquet_versions(self):
        return self.outputs / "geoparquet" / "versions.json"

    def chip_grid(self, tile: str, which: str):
        """``which``: 'full_tile' or 'aoi' (SageMaker GeoFM's chip_grid_full_s2_tile / chip_grid_aoi)."""
        return self.outputs / "chip_grids" / f"{tile}_{which}.geojson"
