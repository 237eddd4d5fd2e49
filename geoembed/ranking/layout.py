"""Where a ranking product's outputs go: per station and model code, below the product's outputs folder
(local or an object-store prefix), as the seed's ``<station>/<variable>/models/<model code>/`` folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RankingLayout:
    outputs: Path  # a local Path or a UPath
    work: Path
    model_code: str

    @property
    def catalog(self) -> Path:
        return self.work / "station_catalog.json"

    def station(self, station: str):
        return self.outputs / "stations" / station / self.model_code

    def images(self, station: str):
        return self.station(station) / "dataset" / "images.parquet"

    def pairs(self, station: str):
        return self.station(station) / "dataset" / "pairs.parquet"

    def dataset_summary(self, station: str):
        return self.station(station) / "dataset" / "dataset.json"

    def model(self, station: str, version: str):
        return self.station(station) / "models" / version / "ranker.pt"

    def current_model(self, station: str):
        return self.station(station) / "models" / "current.json"

    def predictions(self, station: str):
        return self.station(station) / "transform" / "predictions.parquet"

    def report(self, station: str):
        return self.station(station) / f"{self.model_code}.html"
