"""The ranking product's asset keys and partitions: stations (dynamic, registered by ``station_catalog``
as station folders appear)."""

from __future__ import annotations

import dagster as dg

from geoembed_assets.core.keys import ProductKeys


class RankingKeys(ProductKeys):
    """Every asset key of one ranking product (key prefix = product name)."""

    @property
    def source(self) -> dg.AssetKey:
        return self._key("station_source")

    @property
    def catalog(self) -> dg.AssetKey:
        return self._key("station_catalog")

    @property
    def dataset(self) -> dg.AssetKey:
        return self._key("ranking_dataset")

    @property
    def model(self) -> dg.AssetKey:
        return self._key("ranking_model")

    @property
    def predictions(self) -> dg.AssetKey:
        return self._key("ranking_predictions")

    @property
    def report(self) -> dg.AssetKey:
        return self._key("ranking_report")

    @property
    def per_station(self) -> list[dg.AssetKey]:
        return [self.dataset, self.model, self.predictions, self.report]

    @property
    def observe_job(self) -> str:
        return f"{self.product}_observe_stations"


def station_partitions(product: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{product}_stations")
