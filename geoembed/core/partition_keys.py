"""What a valid partition key looks like for each partitioned asset, checked before a request leaves
our commands (Dagster's own CLI answers an invalid key with a traceback)."""

from __future__ import annotations

import datetime as dt

import h3

from geoembed.core.errors import InputError
from geoembed.core.grids.mgrs import TileIdError, canonical_tile_id


class PartitionKeyFormatError(InputError):
    """A partition key is not of the form its asset's partitions take."""


REGION_ASSETS = {"landcover_samples", "cell_embeddings", "embedding_table"}
SCENE_ASSETS = {"scene_chips", "chip_embeddings", "chip_table"}
TILE_ASSETS = {"chip_change", "tile_geoparquet"}
EXAMPLES = {"region": "an H3 region id such as '81083ffffffffff'",
            "scene": "'<YYYY-MM-DD>|<MGRS tile>' such as '2017-02-16|33UUU'",
            "tile": "an MGRS tile id such as '33UUU'"}


def kind_of(asset: str) -> str | None:
    name = asset.rsplit("/", 1)[-1]
    if name in REGION_ASSETS:
        return "region"
    if name in SCENE_ASSETS:
        return "scene"
    if name in TILE_ASSETS:
        return "tile"
    return None


def check_partition_key(asset: str, key: str) -> str:
    """``key`` if it has the form ``asset``'s partitions take (the server still checks it exists)."""
    kind = kind_of(asset)
    if kind is None:
        return key
    valid = False
    try:
        if kind == "region":
            valid = h3.is_valid_cell(key)
        elif kind == "tile":
            valid = canonical_tile_id(key) == key
        else:
            date, _, tile = key.partition("|")
            dt.date.fromisoformat(date)
            valid = canonical_tile_id(tile) == tile and len(date) == 10
    except (ValueError, TypeError, TileIdError):
        valid = False
    if not valid:
        raise PartitionKeyFormatError(f"partition key {key!r} of {asset} is not {EXAMPLES[kind]}")
    return key
