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
from geoembed.imagery.encoders.clay import CLAY_S2_BANDS
from geoembed.imagery.settings import (
    ClayEncoderSettings, EncoderSettings, GeoembedEncoderSettings, RasterImagerySettings, SceneProductSettings,
)

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
    scenes: str | None = Field(default=None, description="Where the Sentinel-2 scenes are (as for an imagery "
                               "product); or give ``rasters``.")
    rasters: RasterImagerySettings | None = Field(default=None, description=(
        "Imagery from any multi-band raster instead of Sentinel-2 scenes (bands named in the configuration)."))
    bands: list[str] = Field(default_factory=lambda: list(DEFAULT_BANDS), description="Bands of each chip.")
    zoom: int | None = Field(default=None, ge=1, le=MAX_ZOOM, description="Web-mercator zoom of the chips (default: "
                             "the zoom whose pixel is nearest the imagery's ground resolution at its latitude).")
    chip_size: Literal[64, 128, 256, 512] = Field(default=256, description="Pixels a chip (a tile) along each edge "
                                                  "(smaller chips: more, finer places to search among).")
    partition_zoom: int | None = Field(default=None, ge=0, le=MAX_ZOOM, description="Zoom of the coarse quadkeys "
                                       "that are partitions (default: the coarsest giving at least ten partitions, "
                                       "at most 8 zoom levels above the chips).")
    labels: LabelSettings | None = None
    backbone: EncoderSettings = Field(default_factory=GeoembedEncoderSettings, description=(
        "The classifier's frozen backbone: our ChipNet trained self-supervised on the chips (kind: geoembed), or "
        "Clay's encoder from a local checkpoint (kind: clay; its bands default to the chips' bands)."))

    @model_validator(mode="after")
    def _zooms(self) -> QuadkeyProductSettings:
        if self.zoom is not None and self.partition_zoom is not None and self.partition_zoom > self.zoom:
            raise ValueError(f"partition_zoom ({self.partition_zoom}) must not be finer than zoom ({self.zoom})")
        return self

    @model_validator(mode="after")
    def _imagery(self) -> QuadkeyProductSettings:
        if (self.scenes is None) == (self.rasters is None):
            raise ValueError("give either scenes (Sentinel-2) or rasters (any multi-band raster), not both or neither")
        if self.rasters is not None:
            if "bands" not in self.model_fields_set:  # default: every band the configuration names
                object.__setattr__(self, "bands", list(self.rasters.bands))
            unknown = [b for b in self.bands if b not in self.rasters.bands]
            if unknown:
                raise ValueError(f"bands {unknown} are not among the rasters' bands {list(self.rasters.bands)}")
            missing = [b for b in self.rasters.rgb_bands if b not in self.bands]
            if missing:
                raise ValueError(f"thumbnail bands {missing} (rasters.rgb) are not among the chips' bands {self.bands}")
        return self

    @property
    def imagery_location(self) -> str:
        """Where the imagery is: the scene location or the rasters' location."""
        return self.rasters.path if self.rasters is not None else self.scenes_location

    @model_validator(mode="after")
    def _backbone_bands(self) -> QuadkeyProductSettings:
        if isinstance(self.backbone, ClayEncoderSettings):
            wanted = self.backbone_bands
            if not set(wanted) <= set(self.bands):
                raise ValueError(f"backbone.bands {wanted} must be among the chips' bands {self.bands}")
            unknown = [b for b in wanted if b not in CLAY_S2_BANDS]
            if unknown:
                raise ValueError(f"Clay has no statistics for bands {unknown}; it knows {list(CLAY_S2_BANDS)}")
        return self

    @property
    def backbone_bands(self) -> list[str]:
        """The bands the backbone reads: Clay's configured bands, else every band of the chips."""
        return list(getattr(self.backbone, "bands", None) or self.bands)


def load_quadkey_settings(path: str | os.PathLike[str]) -> QuadkeyProductSettings:
    """Read and validate a quadkey product settings YAML file; errors name the file and the field."""
    raw = read_settings_file(path, relative_keys=("scenes", "aoi"))
    relative_nested(raw, "labels", "file", Path(path).parent)
    relative_nested(raw, "rasters", "location", Path(path).parent)
    relative_nested(raw, "backbone", "checkpoint", Path(path).parent)
    return validated(QuadkeyProductSettings, raw, str(path))


__all__ = ["LabelSettings", "ProductConfigError", "QuadkeyProductSettings", "load_quadkey_settings"]
