"""Product settings: which raster, which legend, which H3 grid, which model size.

A *product* is one embedding data product (one primary categorical source, one H3 resolution, and any
number of rasters stacked on the same footprint). Its settings are read from a YAML file so that a user can point the pipeline at another raster, resolution, window
size or embedding dimension without editing code. Settings are validated up front and every error
names the file and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from geoembed.core.settings import (  # noqa: F401 - re-exported for the landcover modules
    DEFAULT_PRODUCT_FILE, PRODUCT_ENV_VAR, ProductConfigError, ProductName, product_files_from_env, read_settings_file, relative_nested,
    product_name, resolve_package_path, validated,
)
from geoembed.landcover.windows import cell_statuses


SourceName = Annotated[str, AfterValidator(product_name),
                       Field(description="Short identifier of a stacked source; names its variables and status.")]


class StackedSource(BaseModel):
    """A raster stacked on the primary source's windows: read in its own CRS and resolution at the ground
    points of each window, so every source covers the same footprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SourceName
    raster: str = Field(description="Single-band raster: a local path, a URI rasterio can open, or 'package:...'.")
    kind: Literal["categorical", "continuous"] = Field(description=(
        "categorical: class ids with a legend (one-hot into the model, class fractions per cell); continuous: "
        "a measurement (elevation, temperature) normalised robustly by the model (median and interquartile range "
        "of the training windows)."))
    legend: dict[int, str] | str | None = Field(default=None, description="Categorical only: as the product's legend.")
    nodata: float | None = Field(default=None, description="Override the raster's nodata value.")
    units: str = Field(default="", description="Continuous only: the measurement's units, for the record.")
    min_valid_fraction: float | None = Field(default=None, gt=0.0, le=1.0, description=(
        "A cell whose window has less than this share of valid pixels in this source gets status "
        "'missing_<name>' and is not embedded (default: the product's min_valid_fraction)."))

    @model_validator(mode="after")
    def _kind(self) -> StackedSource:
        if self.kind == "continuous" and self.legend is not None:
            raise ValueError("a continuous source has no legend")
        if self.kind == "categorical" and self.nodata is not None and not float(self.nodata).is_integer():
            raise ValueError("a categorical source's nodata must be an integer")
        return self

    @property
    def stencil_res(self) -> int:
        """Resolution at which the stencil keeps or drops cells (the regions' own by default)."""
        return self.region_res if self.stencil_resolution is None else self.stencil_resolution

    @property
    def raster_location(self) -> str:
        return resolve_raster_location(self.raster)


class ProductSettings(BaseModel):
    """Everything that defines one embedding product. Changing any of these makes a new product."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ProductName
    raster: str | None = Field(
        default=None,
        description="Single-band categorical raster: a local path, a URI rasterio can open "
        "(s3://, https://, /vsi...), or 'package:<module>/<file>' for data installed from PyPI. "
        "Exactly one of raster and landing.",
    )
    landing: str | None = Field(
        default=None,
        description="Landing location of raster files that together form the source (a mosaic; where "
        "files overlap the most recently landed wins): a local directory or an s3://bucket/prefix. "
        "A sensor watches it and refreshes the partitions a new or changed file covers.",
    )
    landing_pattern: str = Field(default="*.tif", description="File names in the landing location to use (glob).")
    landing_check_seconds: int = Field(default=30, ge=1, le=86400, description="How often the landing sensor looks.")
    legend: dict[int, str] | str | None = Field(
        default=None,
        description="Class legend: a mapping {value: name}; 'tag:<name>' to parse the raster's metadata "
        "tag; a built-in legend name ('igbp'); a path to a JSON file; or null to use each distinct value.",
    )
    nodata: int | None = Field(default=None, description="Override the raster's nodata value.")
    background_classes: list[int] = Field(
        default_factory=list,
        description="Class values that alone do not make a region worth a partition (e.g. open water).",
    )
    resolution: int = Field(ge=0, le=15, description="H3 resolution of the embedded cells.")
    region_resolution: int | None = Field(
        default=None, ge=0, le=15, description="H3 resolution of the partition regions (default: resolution - 3)."
    )
    stencil_resolution: int | None = Field(
        default=None, ge=0, le=15, description=(
            "H3 resolution at which the stencil keeps or drops cells (default: the region resolution, whole "
            "regions). Finer than the regions, a region keeps only its sub-regions at this resolution that hold "
            "data: larger partitions (fewer, cheaper runs) over the same cells as regions at this resolution."))
    window_size: int = Field(default=32, ge=4, le=512, description="Window edge in raster pixels.")
    embedding_dim: int = Field(default=64, ge=2, le=2048)
    min_valid_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0, description="A cell is embedded when at least this share of its window is valid."
    )
    unknown_classes: Literal["error", "flag"] = Field(
        default="error",
        description="Raster values missing from the legend: fail the run ('error') or keep the cell with status "
        "'unknown_class' ('flag').",
    )
    bbox: tuple[float, float, float, float] | None = Field(
        default=None, description="Optional area limit [west, south, east, north] in degrees (EPSG:4326)."
    )
    embedding_storage: Literal["float32", "int8", "float32+int8"] = Field(default="float32", description=(
        "How the Zarr product stores vectors: float32 ('embedding'), int8 with one float32 scale per vector "
        "('embedding_int8', 'embedding_scale': 4x smaller; readers dequantise), or both."))
    stack: list[StackedSource] = Field(default_factory=list, description=(
        "More rasters read on the same ground footprint as the primary source's window (each in its own CRS "
        "and resolution). The primary source decides which regions become partitions."))

    @field_validator("window_size")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even so the window centres on the cell's pixel corner grid")
        return value

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, value: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if value is None:
            return None
        west, south, east, north = value
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90):
            raise ValueError("must be [west, south, east, north] with -180<=lon<=180 and -90<=south<north<=90")
        return value

    @model_validator(mode="after")
    def _regions(self) -> ProductSettings:
        if (self.raster is None) == (self.landing is None):
            raise ValueError("set exactly one of 'raster' (one file) and 'landing' (a location of files)")
        region_res = self.region_res
        if region_res >= self.resolution and self.resolution > 0:
            raise ValueError(
                f"region_resolution ({region_res}) must be coarser (smaller) than resolution ({self.resolution})"
            )
        if not region_res <= self.stencil_res < max(self.resolution, 1):
            raise ValueError(
                f"stencil_resolution ({self.stencil_res}) must lie between region_resolution ({region_res}) and "
                f"resolution ({self.resolution}), finer than the first and coarser than the second")
        names = [source.name for source in self.stack]
        if len(set(names)) != len(names):
            raise ValueError(f"stacked source names must be distinct: {names}")
        if self.resolution - region_res > 6:
            raise ValueError(
                f"resolution - region_resolution = {self.resolution - region_res} gives regions of "
                f"{7 ** (self.resolution - region_res):,} cells; keep it at most 6"
            )
        return self

    @property
    def region_res(self) -> int:
        """Resolution of the partition regions."""
        if self.region_resolution is not None:
            return self.region_resolution
        return max(0, self.resolution - 3)

    @property
    def stencil_res(self) -> int:
        """Resolution at which the stencil keeps or drops cells (the regions' own by default)."""
        return self.region_res if self.stencil_resolution is None else self.stencil_resolution

    @property
    def raster_location(self) -> str:
        """The raster as a path or URI rasterio can open (package: references resolved)."""
        if self.raster is None:
            raise ProductConfigError(f"product {self.name!r} reads a landing location, not one raster")
        return resolve_raster_location(self.raster)

    @property
    def source_description(self) -> str:
        primary = self.raster if self.raster is not None else f"{self.landing}/{self.landing_pattern}"
        return " + ".join([primary, *(f"{s.name}={s.raster}" for s in self.stack)])

    @property
    def statuses(self) -> tuple[str, ...]:
        """Status names by code: the base statuses, then 'missing_<name>' per stacked source."""
        return cell_statuses([s.name for s in self.stack])


def resolve_raster_location(raster: str) -> str:
    """Resolve 'package:<module>/<relative path>' to a file inside an installed package."""
    return resolve_package_path(raster, "raster")


def load_settings(path: str | os.PathLike[str]) -> ProductSettings:
    """Read and validate a land-cover product settings YAML file; errors name the file and the field."""
    raw = read_settings_file(path, relative_keys=("raster", "landing"))
    relative_nested(raw, "stack", "raster", Path(path).parent)
    if raw.get("pipeline") == "landcover":  # the default pipeline may be named; it is not a setting
        del raw["pipeline"]
    return settings_from_mapping(raw, source=str(path))


def settings_from_mapping(raw: dict, source: str = "<settings>") -> ProductSettings:
    return validated(ProductSettings, raw, source)
