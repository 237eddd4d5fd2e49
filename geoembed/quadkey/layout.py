"""Where a quadkey product's outputs go, below its outputs folder (local or an object-store prefix) and its
working folder (local). The scene catalog sits where the imagery product keeps its own (one scene
catalog format, one sensor)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geoembed.imagery.layout import ImageryLayout


@dataclass(frozen=True)
class QuadkeyLayout(ImageryLayout):
    @property
    def plan(self) -> Path:
        return self.work / "quadkey_plan.json"

    def partition_datacube(self, partition: str, scene: str):
        """The chips of one scene in one partition ("tile|date" scene keys become "tile_date")."""
        return self.outputs / "datacubes" / partition / f"{scene.replace('|', '_')}.zarr"

    def partition_thumbnail(self, partition: str, scene: str, quadkey: str):
        return self.outputs / "thumbnails" / partition / scene.replace("|", "_") / f"{quadkey}.png"

    def nodata_index(self, partition: str):
        return self.outputs / "nodata_index" / f"{partition}.parquet"

    def nodata_picture(self, partition: str):
        return self.outputs / "nodata_index" / f"{partition}.png"

    def labels(self, partition: str):
        return self.outputs / "labels" / f"{partition}.parquet"

    @property
    def current_backbone(self):
        return self.outputs / "models" / "backbone.json"

    @property
    def current_classifier(self):
        return self.outputs / "models" / "classifier.json"

    def features(self, model_version: str, partition: str, scene: str):
        return self.outputs / "features" / model_version / partition / f"{scene.replace('|', '_')}.zarr"

    @property
    def retrieval(self):
        return self.outputs / "features" / "retrieval.json"
