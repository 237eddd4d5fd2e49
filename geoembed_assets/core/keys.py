"""Asset keys of a product: every key is prefixed with the product's name (each pipeline names its own)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class ProductKeys:
    product: str

    def _key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.product, asset])


class SceneProductKeys(ProductKeys):
    """Keys every product made from Sentinel-2 scenes shares: the scenes it observes and its chip search table."""

    @property
    def source(self) -> dg.AssetKey:
        return self._key("scene_source")

    @property
    def table(self) -> dg.AssetKey:
        return self._key("chip_table")

    @property
    def index(self) -> dg.AssetKey:
        return self._key("chip_index")

    @property
    def observe_job(self) -> str:
        return f"{self.product}_observe_scenes"
