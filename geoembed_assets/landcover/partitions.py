"""The land-cover product's asset keys and its region partitions, named in this one place."""

from __future__ import annotations

import dagster as dg

from geoembed_assets.core.keys import ProductKeys


class LandcoverKeys(ProductKeys):
    """Every asset key of one land-cover product (key prefix = product name)."""

    @property
    def source(self) -> dg.AssetKey:
        return self._key("landcover_source")

    @property
    def regions(self) -> dg.AssetKey:
        return self._key("h3_regions")

    @property
    def samples(self) -> dg.AssetKey:
        return self._key("landcover_samples")

    @property
    def model(self) -> dg.AssetKey:
        return self._key("embedding_model")

    @property
    def embeddings(self) -> dg.AssetKey:
        return self._key("cell_embeddings")

    @property
    def map(self) -> dg.AssetKey:
        return self._key("embedding_map")

    @property
    def table(self) -> dg.AssetKey:
        return self._key("embedding_table")

    @property
    def index(self) -> dg.AssetKey:
        return self._key("embedding_index")

    @property
    def observe_job(self) -> str:
        return f"{self.product}_observe_source"

    @property
    def model_op(self) -> str:
        """The model asset's op name (run config of training goes under ``ops.<this>``)."""
        return f"{self.product}__embedding_model"


def region_partitions(product: str) -> dg.DynamicPartitionsDefinition:
    """Coarse H3 regions, registered by ``h3_regions`` as it finds regions with data."""
    return dg.DynamicPartitionsDefinition(name=f"{product}_regions")
