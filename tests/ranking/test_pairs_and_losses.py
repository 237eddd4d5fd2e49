"""The ranking pipeline's pure logic: the hour/month filters, the split of annotated pairs by connected
components (no image on both sides) and its random fallback, minimum pair counts, reversed pairs, and the
losses on hand-made pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoembed.ranking.losses import margin_ranking_loss, ranknet_loss
from geoembed.ranking.pairs import (
    RankingInputError, check_pair_counts, daytime_mask, split_pairs, with_reversed,
)


def test_hours_and_months_are_inclusive_like_rank_input():
    times = np.array(["2024-07-01T06:59", "2024-07-01T07:00", "2024-07-01T18:59", "2024-07-01T19:00",
                      "2024-01-15T12:00", "2024-12-15T12:00"], dtype="datetime64[m]")
    assert daytime_mask(times).tolist() == [False, True, True, False, True, True]
    assert daytime_mask(times, min_month=3, max_month=11).tolist() == [False, True, True, False, False, False]


def _clustered_pairs(groups=20, per_group=6, seed=0):
    """Pairs only within groups of images: every group is a connected component."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for g in range(groups):
        ids = np.arange(per_group) + g * per_group
        for _ in range(10):
            i, j = rng.choice(ids, 2, replace=False)
            a.append(i)
            b.append(j)
    return np.array(a), np.array(b)


def test_components_put_no_image_on_both_sides():
    a, b = _clustered_pairs()
    split = split_pairs(a, b, 0.8, seed=3)
    assert split.method == "components" and abs(split.train_image_share - 0.8) <= 0.05
    assert split.images_on_both_sides(a, b) == set()
    assert 0 < (~split.train).sum() < len(a)


def test_one_giant_component_falls_back_to_a_random_pair_split():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, 400)
    b = (a + rng.integers(1, 49, 400)) % 50  # a dense graph: one component
    split = split_pairs(a, b, 0.8, seed=0)
    assert split.method == "random pairs"
    assert 0.7 < split.train.mean() < 0.9


def test_too_few_pairs_are_named():
    a, b = _clustered_pairs(groups=3)
    split = split_pairs(a, b, 0.8, seed=0)
    with pytest.raises(RankingInputError, match="station 29: .* at least 100 and 10"):
        check_pair_counts(split, "29")


def test_reversed_pairs_negate_labels():
    a, b, labels = with_reversed(np.array([1, 2]), np.array([3, 4]), np.array([1, 0]))
    assert a.tolist() == [1, 2, 3, 4] and b.tolist() == [3, 4, 1, 2] and labels.tolist() == [1, 0, -1, 0]


def test_ranknet_loss_by_hand():
    sa, sb = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    labels = torch.tensor([1, 0, -1])
    p = torch.sigmoid(sa - sb)
    expected = -(torch.log(p[0]) + 0.5 * torch.log(p[1]) + 0.5 * torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    torch.testing.assert_close(ranknet_loss(sa, sb, labels), expected)
    # Scores in the right order cost less than the same scores swapped.
    assert ranknet_loss(sa, sb, labels) < ranknet_loss(sb, sa, labels)


def test_margin_ranking_loss_by_hand():
    sa, sb = torch.tensor([1.0, 0.2, 0.5]), torch.tensor([0.0, 0.0, 0.2])
    labels = torch.tensor([1, 1, 0])
    # pair 0 clears the margin (0), pair 1 misses it by 0.3, the tie costs |0.3|.
    torch.testing.assert_close(margin_ranking_loss(sa, sb, labels, margin=0.5), torch.tensor((0.0 + 0.3 + 0.3) / 3))
