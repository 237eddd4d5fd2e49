"""Self-supervised training with a triplet loss (Tile2Vec): an anchor, a positive from its
neighbourhood, a negative from far away; every encoder of the platform trains through this one loop."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn


def random_dihedral(batch: torch.Tensor, generator: torch.Generator, dims: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """Random rotation by k*90 degrees and flip of a batch's two spatial ``dims`` (overhead views have no
    preferred orientation)."""
    k = int(torch.randint(0, 4, (1,), generator=generator))
    out = torch.rot90(batch, k, dims=dims)
    if bool(torch.randint(0, 2, (1,), generator=generator)):
        out = torch.flip(out, dims=(dims[1],))
    return out


@dataclass
class TripletTraining:
    losses: list[float]
    seconds: float
    steps: int


def train_triplets(
    model: nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    draw: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    steps: int,
    learning_rate: float,
    margin: float,
    progress: Callable[[int, float], None] | None = None,
) -> TripletTraining:
    """Train ``model`` in place: each step ``draw()`` gives (anchors, positives, negatives) on the model's
    device, ``embed`` maps their concatenation to unit vectors. AdamW with a one-cycle schedule;
    ``progress(step, mean recent loss)`` twenty times along the way."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps)
    loss_fn = nn.TripletMarginLoss(margin=margin)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        anchors, positives, negatives = draw()
        za, zp, zn = embed(torch.cat([anchors, positives, negatives])).split(len(anchors))
        loss = loss_fn(za, zp, zn)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % max(1, steps // 20) == 0:
            progress(step + 1, float(np.mean(losses[-max(1, steps // 20):])))
    model.eval()
    return TripletTraining(losses, time.perf_counter() - start, steps)
