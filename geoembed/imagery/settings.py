"""Imagery product settings: where the scenes are, which tiles (or area of interest), which bands, the
chip size and the encoder. Read from a YAML file with ``pipeline: imagery``; errors name the file and
the field."""

from __future__ import annotations

import os
import re
from datetime import date as date_type
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geoembed.core.grids.mgrs import TileIdError, canonical_tile_id
from geoembed.core.settings import (
    ProductConfigError, ProductName, read_settings_file, relative_nested, resolve_package_path, validated,
)

CLAY_SIZES = ("tiny", "small", "base", "large")


class GeoembedEncoderSettings(BaseModel):
    """Our own self-supervised chip encoder (a small CNN trained on the product's chips)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["geoembed"] = "geoembed"
    embedding_dim: int = Field(default=128, ge=8, le=2048, description="Class-level (whole chip) vector length.")
    patch_dim: int = Field(default=64, ge=4, le=1024, description="Patch-level vector length.")
    patch_size: int = Field(default=16, ge=4, le=128, description="Pixels per patch (a power of two, at least 4).")
    width: int = Field(default=32, ge=8, le=512, description="Channels of the first convolution.")

    @field_validator("patch_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two (the encoder halves the resolution per stage)")
        return value


class ClayEncoderSettings(BaseModel):
    """Clay v1.5 (or another size of the same architecture) from a local checkpoint, never downloaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["clay"]
    checkpoint: str = Field(description="Local path (or package:...) of the Lightning .ckpt, or of an encoder-only "
                            ".pt / .safetensors file with the same key layout.")
    sha256: str | None = Field(default=None, description="Expected SHA-256 of the checkpoint file; a different file "
                               "is refused. Unset: the file's checksum is computed and recorded.")
    size: Literal["tiny", "small", "base", "large"] = "large"
    bands: list[str] | None = Field(default=None, description="Bands fed to Clay (default: the ten with Clay "
                                    "Sentinel-2 statistics: B02-B08, B8A, B11, B12).")
    patch_embeddings: bool = Field(default=False, description="Also store the patch-level embeddings "
                                   "((chip_size/8)^2 x dim per chip: 4 MiB a chip at full size).")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value.lower()):
            raise ValueError("must be 64 hexadecimal digits")
        return value.lower() if value else None

    @property
    def checkpoint_path(self) -> str:
        return resolve_package_path(self.checkpoint, "checkpoint")


class RasterImagerySettings(BaseModel):
    """Imagery from any multi-band raster GDAL reads (GeoTIFF, COG, VRT, JPEG 2000...) instead of Sentinel-2
    scenes: each file is one acquisition, its bands named here. Stored values become ``value = stored x scale +
    offset`` (reflectance for optical imagery), kept at 1e-4 steps between 0.0001 and 6.5535 as Sentinel-2
    reflectance is; the configured or the file's own nodata is no data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    location: str = Field(description="A raster file, or a folder / s3:// prefix holding them (relative to the "
                          "product file, or package:<module>/<path>).")
    pattern: str = Field(default="*.tif", description="Which files of a folder are rasters (a glob on the name).")
    bands: dict[str, int] = Field(description="Band name -> band number (from 1) in each file.", min_length=1)
    date: date_type | None = Field(default=None, description="The acquisition date of every file.")
    date_pattern: str = Field(default=r"(?P<date>\d{4}-?\d{2}-?\d{2})", description=(
        "Without ``date``: a regular expression whose group 'date' (YYYYMMDD or YYYY-MM-DD) is found in each file "
        "name."))
    scale: float = Field(default=1.0, description="value = stored x scale + offset")
    offset: float = 0.0
    nodata: float | None = Field(default=None, description="Stored value meaning no data (default: the file's own).")
    rgb: list[str] | None = Field(default=None, min_length=3, max_length=3, description=(
        "Bands of the RGB thumbnails (default: the first three bands, or the first band as grey)."))

    @field_validator("bands")
    @classmethod
    def _band_numbers(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"band numbers start at 1: {bad}")
        return value

    @field_validator("date_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if "date" not in compiled.groupindex:
            raise ValueError("needs a group named 'date', e.g. (?P<date>\\d{8})")
        return value

    @model_validator(mode="after")
    def _rgb(self) -> RasterImagerySettings:
        unknown = [b for b in self.rgb or [] if b not in self.bands]
        if unknown:
            raise ValueError(f"rgb bands {unknown} are not among the bands {list(self.bands)}")
        return self

    @property
    def rgb_bands(self) -> tuple[str, str, str]:
        names = list(self.bands)
        return tuple(self.rgb or (names[:3] if len(names) >= 3 else [names[0]] * 3))  # type: ignore[return-value]

    @property
    def path(self) -> str:
        return resolve_package_path(self.location, "rasters location")


EncoderSettings = Annotated[GeoembedEncoderSettings | ClayEncoderSettings, Field(discriminator="kind")]


class SceneProductSettings(BaseModel):
    """What every product made from Sentinel-2 scenes has: where the scenes are, which tiles, which bands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ProductName
    scenes: str = Field(description="Where the scenes are: a local folder or an s3:// prefix holding Sentinel-2 "
                        "band files (T<tile>_<datetime>_B<nn>.jp2/.tif) or STAC item JSON files pointing at them, a "
                        "single STAC item file, or package:<module>/<path> for data installed from PyPI.")
    tiles: list[str] | None = Field(default=None, description="MGRS tile ids to process (default: every tile the "
                                    "area of interest touches, or every tile the scenes cover).")
    aoi: str | None = Field(default=None, description="Area of interest: a GeoJSON file (relative to this file) or "
                            "inline GeoJSON; the tiles it touches are processed.")
    scene_check_seconds: int = Field(default=60, ge=1, le=86400, description="How often the scene sensor looks.")

    @field_validator("tiles")
    @classmethod
    def _tiles(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return sorted({canonical_tile_id(t) for t in value})
        except TileIdError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _bands(self) -> SceneProductSettings:
        from geoembed.imagery.scenes import S2_BANDS  # the band table lives with the scenes

        if getattr(self, "rasters", None) is not None:
            return self  # bands named by the raster configuration
        unknown = [b for b in (getattr(self, "bands", None) or []) if b not in S2_BANDS]
        if unknown:
            raise ValueError(f"unknown bands {unknown}; Sentinel-2 bands are {list(S2_BANDS)}")
        return self

    @property
    def scenes_location(self) -> str:
        return resolve_package_path(self.scenes, "scenes")


class ImageryProductSettings(SceneProductSettings):
    """Everything that defines one imagery embedding product."""

    pipeline: Literal["imagery"]
    bands: list[str] | None = Field(default=None, description="Bands of the datacube (default: every band of the "
                                    "product level: 13 for L1C, 12 for L2A).")
    chip_size: int = Field(default=256, ge=16, le=2048, description="Chip edge in 10 m pixels (a multiple of 16).")
    encoder: EncoderSettings = Field(default_factory=GeoembedEncoderSettings)
    change_threshold: float = Field(default=0.9, gt=-1.0, lt=1.0, description="A chip whose cosine similarity to "
                                    "its first date falls below this is flagged as changed.")

    @field_validator("chip_size")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError("must be a multiple of 16 (encoders work on 8 and 16 pixel patches)")
        return value

def load_imagery_settings(path: str | os.PathLike[str]) -> ImageryProductSettings:
    """Read and validate an imagery product settings YAML file; errors name the file and the field."""
    raw = read_settings_file(path, relative_keys=("scenes", "aoi"))
    relative_nested(raw, "encoder", "checkpoint", Path(path).parent)
    return validated(ImageryProductSettings, raw, str(path))


__all__ = ["ClayEncoderSettings", "GeoembedEncoderSettings", "ImageryProductSettings", "ProductConfigError",
           "RasterImagerySettings", "SceneProductSettings", "load_imagery_settings"]
