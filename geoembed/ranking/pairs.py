"""Which images and annotated pairs a station's ranking model trains on, as the seed's ``rank-input.R``
decides: images between configured hours and months, pairs split into train and validation by connected
components of the image-pair graph (no image on both sides), falling back to a random pair split when the
components cannot give the wanted share, reversed pairs added with negated labels, and minimum counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geoembed.core.errors import InputError

MIN_TRAIN_PAIRS = 100
MIN_VALIDATION_PAIRS = 10


class RankingInputError(InputError):
    """A station's annotations cannot train a model (too few pairs, unknown images...)."""


def daytime_mask(timestamps: np.ndarray, min_hour: int = 7, max_hour: int = 18, min_month: int = 1,
                 max_month: int = 12) -> np.ndarray:
    """Images taken from ``min_hour``:00 to ``max_hour``:59 and in months ``min_month`` to ``max_month``
    (inclusive; the seed's defaults keep 7:00-18:59, every month)."""
    times = np.asarray(timestamps, dtype="datetime64[m]")
    hours = (times.astype("datetime64[h]") - times.astype("datetime64[D]")).astype(int)
    months = times.astype("datetime64[M]").astype(int) % 12 + 1
    return (hours >= min_hour) & (hours <= max_hour) & (months >= min_month) & (months <= max_month)


@dataclass
class PairSplit:
    train: np.ndarray  # (pairs,) bool: True = train, False = validation
    method: str  # "components" or "random pairs" (the fallback)
    train_image_share: float  # share of the annotated images on the training side

    def images_on_both_sides(self, a: np.ndarray, b: np.ndarray) -> set:
        train_images = set(a[self.train]) | set(b[self.train])
        val_images = set(a[~self.train]) | set(b[~self.train])
        return train_images & val_images


def split_pairs(a: np.ndarray, b: np.ndarray, train_share: float = 0.8, tolerance: float = 0.05,
                seed: int = 0) -> PairSplit:
    """Train/validation split of the pairs (a[i], b[i]) by connected components of the image-pair graph:
    whole components go to training, in random order, until ``train_share`` of the images are there. When
    that misses by more than ``tolerance`` (one giant component), pairs are split at random instead."""
    a, b = np.asarray(a), np.asarray(b)
    images, index = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = index[: len(a)], index[len(a):]
    graph = coo_matrix((np.ones(len(a)), (ia, ib)), shape=(len(images), len(images)))
    n, component = connected_components(graph, directed=False)
    rng = np.random.default_rng(seed)
    sizes = np.bincount(component, minlength=n)
    chosen, taken = set(), 0
    for c in rng.permutation(n):
        if taken >= train_share * len(images):
            break
        chosen.add(int(c))
        taken += int(sizes[c])
    share = taken / max(1, len(images))
    if abs(share - train_share) <= tolerance and 0 < len(chosen) < n:
        return PairSplit(np.isin(component[ia], list(chosen)), "components", share)
    train = rng.random(len(a)) < train_share
    train_images = set(ia[train]) | set(ib[train])
    return PairSplit(train, "random pairs", len(train_images) / max(1, len(images)))


def check_pair_counts(split: PairSplit, station: str, min_train: int = MIN_TRAIN_PAIRS,
                      min_validation: int = MIN_VALIDATION_PAIRS) -> None:
    train, validation = int(split.train.sum()), int((~split.train).sum())
    if train < min_train or validation < min_validation:
        raise RankingInputError(f"station {station}: {train} training and {validation} validation pairs; at least "
                                f"{min_train} and {min_validation} are needed to train a ranking model")


def with_reversed(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair also as (b, a) with the negated label (1: a ranks higher, -1: lower, 0: a tie)."""
    return np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([labels, -np.asarray(labels)])
