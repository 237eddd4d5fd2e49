"""Quadkey product settings: where the scenes are, which bands, the web-mercator zoom of the chips and of
the partitions, and the labelled polygons. Read from a YAML file with ``pipeline: quadkey``; errors name
the file and the field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geoembed.core.grids.quadkey import MAX_ZOOM
from geoembed.core.settings import ProductConfigError, read_settings_file, relative_nested, resolve_package_path, validated
from geoembed.imagery.settings import SceneProductSettings

DEFAULT_BANDS = ("B02", "B03", "B04", "B08")  # Sentinel-2's 10 m bands: blue, green, red, near infrared


class LabelSettings(BaseModel):
    """Labelled polygons that give each chip its classes (OpenStreetMap land use, or any vector file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(description="A vector file (GeoPackage, GeoJSON, Shapefile...; relative to the product file, "
                      "or package:<module>/<path>).")
    class_field: str = Field(description="The field holding each polygon's class.")
    classes: list[str] | None = Field(default=None, description="The classes to use, in this order (default: every "
                                      "value of the field, sorted).")
    min_share: float = Field(default=0.05, gt=0.0, le=1.0, description="A chip has a class when the class's "
                             "polygons cover at least this share of it.")

    @property
    def location(self) -> str:
        return resolve_package_path(self.file, "labels file")


class QuadkeyProductSettings(SceneProductSettings):
    """Everything that defines one quadkey chip product (scenes, tiles and area of interest as for an
    imagery product)."""

    pipeline: Literal["quadkey"]
    bands: list[str] = Field(default_factory=lambda: list(DEFAULT_BANDS), description="Bands of each chip.")
    zoom: int | None = Field(default=None, ge=1, le=MAX_ZOOM, description="Web-mercator zoom of the chips (default: "
                             "the zoom whose pixel is nearest the imagery's ground resolution at its latitude).")
    chip_size: Literal[256, 512] = Field(default=256, description="Pixels a chip (a tile) along each edge.")
    partition_zoom: int | None = Field(default=None, ge=0, le=MAX_ZOOM, description="Zoom of the coarse quadkeys "
                                       "that are partitions (default: the coarsest giving at least ten partitions, "
                                       "at most 8 zoom levels above the chips).")
    labels: LabelSettings | None = None

    @model_validator(mode="after")
    def _zooms(self) -> QuadkeyProductSettings:
        if self.zoom is not None and self.partition_zoom is not None and self.partition_zoom > self.zoom:
            raise ValueError(f"partition_zoom ({self.partition_zoom}) must not be finer than zoom ({self.zoom})")
        return self


def load_quadkey_settings(path: str | os.PathLike[str]) -> QuadkeyProductSettings:
    """Read and validate a quadkey product settings YAML file; errors name the file and the field."""
    raw = read_settings_file(path, relative_keys=("scenes", "aoi"))
    relative_nested(raw, "labels", "file", Path(path).parent)
    return validated(QuadkeyProductSettings, raw, str(path))


__all__ = ["LabelSettings", "ProductConfigError", "QuadkeyProductSettings", "load_quadkey_settings"]
