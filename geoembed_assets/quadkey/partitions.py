"""The quadkey product's asset keys and partitions, named in this one place: coarse quadkeys (dynamic,
registered by ``quadkey_catalog`` as scenes are found)."""

from __future__ import annotations

import dagster as dg

from geoembed_assets.core.keys import SceneProductKeys


class QuadkeyKeys(SceneProductKeys):
    """Every asset key of one quadkey product (key prefix = product name)."""

    @property
    def catalog(self) -> dg.AssetKey:
        return self._key("quadkey_catalog")

    @property
    def chips(self) -> dg.AssetKey:
        return self._key("quadkey_chips")

    @property
    def labels(self) -> dg.AssetKey:
        return self._key("chip_labels")

    @property
    def backbone(self) -> dg.AssetKey:
        return self._key("chip_backbone")

    @property
    def classifier(self) -> dg.AssetKey:
        return self._key("chip_classifier")

    @property
    def features(self) -> dg.AssetKey:
        return self._key("chip_features")

    @property
    def retrieval(self) -> dg.AssetKey:
        return self._key("chip_retrieval")

    @property
    def backbone_op(self) -> str:
        return f"{self.product}__chip_backbone"

    @property
    def features_op(self) -> str:
        return f"{self.product}__chip_features"

    @property
    def classifier_op(self) -> str:
        return f"{self.product}__chip_classifier"


def quadkey_partitions(product: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{product}_quadkeys")
