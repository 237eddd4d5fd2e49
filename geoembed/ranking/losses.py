"""Ranking losses on one score per image: RankNet (the seed's) and margin ranking (an option)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranknet_loss(score_a: torch.Tensor, score_b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE(sigmoid(s_a - s_b), (label + 1) / 2): label 1 = a ranks higher, -1 = lower, 0 = a tie (target 0.5)."""
    target = (labels.float() + 1.0) / 2.0
    return F.binary_cross_entropy_with_logits(score_a - score_b, target)


def margin_ranking_loss(score_a: torch.Tensor, score_b: torch.Tensor, labels: torch.Tensor,
                        margin: float = 0.5) -> torch.Tensor:
    """max(0, margin - label (s_a - s_b)) for ordered pairs; a tie costs |s_a - s_b| (the scores should agree)."""
    difference = score_a - score_b
    ordered = labels != 0
    losses = torch.where(ordered, F.relu(margin - labels.float() * difference), difference.abs())
    return losses.mean()
