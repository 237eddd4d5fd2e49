"""Ranking product settings (``pipeline: ranking``): where the station folders are (the FPE development
layout), which observed variable and annotations, the seed's image filters, the model's hyper-parameters
and the validation floor of the diagnostics check. Errors name the file and the field."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geoembed.core.settings import ProductConfigError, ProductName, read_settings_file, validated

# rank-dataset.R: the annotation variable that goes with each observed variable.
ANNOTATION_VARIABLES = {"FLOW_CFS": "FLOW", "STAGE_FT": "STAGE", "ICE": "ICE", "SNOW_FT": "SNOW",
                        "CHLA_PPB": "ALGAE", "ANIMAL_COUNT": "ANIMALS", "OTHER": "OTHER"}


class ImageFilters(BaseModel):
    """rank-input.R's filters: images outside these hours (station local time) and months are not trained on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_hour: int = Field(default=7, ge=0, le=23)
    max_hour: int = Field(default=18, ge=0, le=23)
    min_month: int = Field(default=1, ge=1, le=12)
    max_month: int = Field(default=12, ge=1, le=12)

    @model_validator(mode="after")
    def _ordered(self) -> ImageFilters:
        if self.min_hour > self.max_hour or self.min_month > self.max_month:
            raise ValueError("min_hour/min_month must not exceed max_hour/max_month")
        return self


class RankingTraining(BaseModel):
    """How a station's ranking model is trained (the seed's train.py hyper-parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(default=20, ge=1, le=1000)
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    optimizer: Literal["sgd", "adam"] = Field(default="sgd", description="sgd: momentum 0.9, as the seed.")
    loss: Literal["ranknet", "margin"] = "ranknet"
    freeze_backbone_epochs: int = Field(default=2, ge=0, description="Epochs that train the head only.")
    batch_size: int = Field(default=32, ge=2, le=4096)
    image_size: int = Field(default=128, ge=16, le=1024, description="Images are resized to this square (pixels).")
    backbone_width: int = Field(default=32, ge=8, le=256, description="Channels of the CNN backbone's first stage.")
    hidden: list[int] = Field(default_factory=lambda: [256, 64], description="Widths of the MLP head's hidden layers.")
    train_share: float = Field(default=0.8, gt=0, lt=1, description="Share of annotated images on the training side.")
    seed: int = 0


class RankingProductSettings(BaseModel):
    """Everything that defines one station-ranking product."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: Literal["ranking"]
    name: ProductName
    stations: str = Field(description="A folder laid out like the FPE development data: stations/<id>/db/... and "
                          "stations/<id>/storage/... (relative to this file, or absolute).")
    variable: str = Field(default="FLOW_CFS", description="The observed series (datasets/*/series/<variable>.json).")
    annotation_variable: str | None = Field(default=None, description="The annotations' variable (default: the "
                                            "seed's for the observed variable, e.g. FLOW for FLOW_CFS).")
    model_code: str = Field(default="RANK", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                            description="The model code (versioning of the training set-up, as RANK-FLOW-20240709).")
    max_gap_minutes: int = Field(default=65, ge=0, description="An image gets an observed value when the series "
                                 "has points within this many minutes on both sides (linear interpolation).")
    filters: ImageFilters = Field(default_factory=ImageFilters)
    training: RankingTraining = Field(default_factory=RankingTraining)
    min_validation_tau: float = Field(default=0.3, ge=-1, le=1, description="The report's check fails below this "
                                      "Kendall tau between score and observed value on the validation images.")
    station_check_seconds: int = Field(default=60, ge=1, le=86400, description="How often the station sensor looks.")

    @property
    def annotations_variable(self) -> str:
        return self.annotation_variable or ANNOTATION_VARIABLES.get(self.variable, self.variable)


def load_ranking_settings(path: str | os.PathLike[str]) -> RankingProductSettings:
    """Read and validate a ranking product settings YAML file; errors name the file and the field."""
    return validated(RankingProductSettings, read_settings_file(path, relative_keys=("stations",)), str(path))


__all__ = ["ImageFilters", "ProductConfigError", "RankingProductSettings", "RankingTraining", "load_ranking_settings"]
