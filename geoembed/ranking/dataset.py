"""A station's training set, as the seed's ``rank-input.R`` makes it: the hour and month filters (station
local time), annotated pairs split into train and validation by connected components, minimum counts, and
every image assigned to the split the report measures it in."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from geoembed.ranking.pairs import PairSplit, check_pair_counts, daytime_mask, split_pairs
from geoembed.ranking.settings import ImageFilters
from geoembed.ranking.stations import Station, StationData

# Where the report measures each image: on a training / validation pair, unannotated inside the annotated
# period (test_in) or outside it (test_out).
IMAGE_SPLITS = ("train", "validation", "test_in", "test_out")


@dataclass
class RankingDataset:
    station: Station
    images: pd.DataFrame  # StationData.images + daytime (bool), split
    pairs: pd.DataFrame  # the pairs trained on: StationData.pairs + split ("train" / "validation")
    split_method: str
    version: str
    counts: dict = field(default_factory=dict)

    def image_index(self) -> dict[str, int]:
        return {image: i for i, image in enumerate(self.images["image_id"])}


def local_times(images: pd.DataFrame, timezone: str) -> np.ndarray:
    return images["timestamp"].dt.tz_convert(timezone).dt.tz_localize(None).to_numpy()


def build_dataset(data: StationData, filters: ImageFilters, train_share: float = 0.8, seed: int = 0) -> RankingDataset:
    """Filters, split and counts of one station; raises ``RankingInputError`` when too few pairs remain."""
    images = data.images.copy()
    images["daytime"] = daytime_mask(local_times(images, data.station.timezone), filters.min_hour, filters.max_hour,
                                     filters.min_month, filters.max_month)
    kept = set(images["image_id"][images["daytime"]])
    pairs = data.pairs
    usable = pairs[pairs["left_id"].isin(kept) & pairs["right_id"].isin(kept)].reset_index(drop=True)
    split: PairSplit = split_pairs(usable["left_id"].to_numpy(), usable["right_id"].to_numpy(), train_share, seed=seed)
    check_pair_counts(split, data.station.key)
    usable["split"] = np.where(split.train, "train", "validation")
    train_images = set(usable["left_id"][split.train]) | set(usable["right_id"][split.train])
    val_images = set(usable["left_id"][~split.train]) | set(usable["right_id"][~split.train])
    annotated = train_images | val_images
    stamps = images["timestamp"][images["image_id"].isin(annotated)]
    first, last = stamps.min(), stamps.max()
    inside = (images["timestamp"] >= first) & (images["timestamp"] <= last)
    images["split"] = np.select(
        [images["image_id"].isin(train_images), images["image_id"].isin(val_images), inside],
        ["train", "validation", "test_in"], "test_out")
    counts = {
        "images": len(images), "daytime_images": int(images["daytime"].sum()),
        "images_with_value": int(np.isfinite(images["value"]).sum()),
        "annotated_pairs": len(pairs), "pairs_outside_filters": len(pairs) - len(usable),
        "train_pairs": int(split.train.sum()), "validation_pairs": int((~split.train).sum()),
        "tied_pairs": int((usable["label"] == 0).sum()),
        "annotations": int(pairs["annotation_id"].nunique()) if len(pairs) else 0,
        **{f"{s}_images": int((images["split"] == s).sum()) for s in IMAGE_SPLITS},
        "train_image_share": round(split.train_image_share, 3),
    }
    return RankingDataset(data.station, images, usable, split.method, data.version, counts)
