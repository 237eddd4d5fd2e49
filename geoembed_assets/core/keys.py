"""Asset keys of a product: every key is prefixed with the product's name (each pipeline names its own)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class ProductKeys:
    product: str

    def _key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.product, asset])
