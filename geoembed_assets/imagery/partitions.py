"""The imagery product's asset keys and partitions, named in this one place: MGRS tile x acquisition
date (two dynamic dimensions, registered by ``scene_catalog`` as scenes are found), and per tile."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from geoembed_assets.core.keys import SceneProductKeys


class ImageryKeys(SceneProductKeys):
    """Every asset key of one imagery product (key prefix = product name)."""

    @property
    def catalog(self) -> dg.AssetKey:
        return self._key("scene_catalog")

    @property
    def chips(self) -> dg.AssetKey:
        return self._key("scene_chips")

    @property
    def encoder(self) -> dg.AssetKey:
        return self._key("chip_encoder")

    @property
    def embeddings(self) -> dg.AssetKey:
        return self._key("chip_embeddings")

    @property
    def change(self) -> dg.AssetKey:
        return self._key("chip_change")

    @property
    def geoparquet(self) -> dg.AssetKey:
        return self._key("tile_geoparquet")

    @property
    def encoder_op(self) -> str:
        """The encoder asset's op name (training run config goes under ``ops.<this>``)."""
        return f"{self.product}__chip_encoder"


@dataclass(frozen=True)
class ImageryPartitions:
    tiles: dg.DynamicPartitionsDefinition
    dates: dg.DynamicPartitionsDefinition
    scenes: dg.MultiPartitionsDefinition  # tile x date

    @classmethod
    def of(cls, product: str) -> ImageryPartitions:
        tiles = dg.DynamicPartitionsDefinition(name=f"{product}_tiles")
        dates = dg.DynamicPartitionsDefinition(name=f"{product}_dates")
        return cls(tiles, dates, dg.MultiPartitionsDefinition({"tile": tiles, "date": dates}))

    @property
    def per_tile(self) -> dg.MultiToSingleDimensionPartitionMapping:
        """From tile x date partitions to the tile's partition (all dates of a tile)."""
        return dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="tile")


def scene_key(tile: str, date: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"tile": tile, "date": date})


def tile_and_date(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(tile, date) of a tile x date partition key ("2017-02-16|33UUU" or a MultiPartitionKey)."""
    if isinstance(key, dg.MultiPartitionKey):
        return key.keys_by_dimension["tile"], key.keys_by_dimension["date"]
    date, _, tile = str(key).partition("|")
    return tile, date
