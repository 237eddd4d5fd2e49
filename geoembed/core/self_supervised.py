"""Self-supervised training; every encoder of the platform trains through the one loop ``train_views``.

Two objectives over it:
* triplet (Tile2Vec): an anchor, a positive from its neighbourhood, a negative from far away;
* contrastive (SimCLR's NT-Xent): two random views (crops, rotations, flips) of each sample are
  positives, every other sample of the batch a negative. Invariance to crops keeps what a window is
  mostly made of and lets go of what a crop may cut out.
"""

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


def random_crops(batch: torch.Tensor, generator: torch.Generator, min_share: float) -> torch.Tensor:
    """Each sample of ``batch`` (B, ..., H, W) cropped to a random square of side between ``min_share`` of
    the smaller edge and all of it, anywhere in the sample, and resized back to H x W by nearest-neighbour
    index arithmetic (class ids stay class ids)."""
    b, h, w = batch.shape[0], batch.shape[-2], batch.shape[-1]
    edge = min(h, w)
    side = torch.randint(max(1, int(round(min_share * edge))), edge + 1, (b,), generator=generator)
    top = (torch.rand(b, generator=generator) * (h - side + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - side + 1)).long()
    rows = top[:, None] + torch.arange(h)[None, :] * side[:, None] // h
    cols = left[:, None] + torch.arange(w)[None, :] * side[:, None] // w
    lead = (1,) * (batch.dim() - 3)
    rows = rows.view(b, *lead, h, 1).expand(*batch.shape).to(batch.device)
    cols = cols.view(b, *lead, 1, w).expand(*batch.shape).to(batch.device)
    return batch.gather(-2, rows).gather(-1, cols)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy: for each of the 2N unit vectors, its other view is
    the positive among the other 2N - 1."""
    z = torch.cat([z1, z2])
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(logits, target)


@dataclass
class SelfSupervisedTraining:
    losses: list[float]
    seconds: float
    steps: int


def train_views(
    model: nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    draw: Callable[[], tuple[torch.Tensor, ...]],
    loss_fn: Callable[..., torch.Tensor],
    steps: int,
    learning_rate: float,
    progress: Callable[[int, float], None] | None = None,
) -> SelfSupervisedTraining:
    """Train ``model`` in place: each step ``draw()`` gives equally long batches of views on the model's
    device, ``embed`` maps their concatenation to unit vectors and ``loss_fn`` scores the views' vectors.
    AdamW with a one-cycle schedule; ``progress(step, mean recent loss)`` twenty times along the way."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        views = draw()
        loss = loss_fn(*embed(torch.cat(views)).split(len(views[0])))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % max(1, steps // 20) == 0:
            progress(step + 1, float(np.mean(losses[-max(1, steps // 20):])))
    model.eval()
    return SelfSupervisedTraining(losses, time.perf_counter() - start, steps)


def train_triplets(
    model: nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    draw: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    steps: int,
    learning_rate: float,
    margin: float,
    progress: Callable[[int, float], None] | None = None,
) -> SelfSupervisedTraining:
    """``train_views`` with the triplet margin loss: ``draw()`` gives (anchors, positives, negatives)."""
    return train_views(model, embed, draw, nn.TripletMarginLoss(margin=margin), steps, learning_rate, progress)


def train_contrastive(
    model: nn.Module,
    embed: Callable[[torch.Tensor], torch.Tensor],
    draw: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    learning_rate: float,
    temperature: float,
    progress: Callable[[int, float], None] | None = None,
) -> SelfSupervisedTraining:
    """``train_views`` with NT-Xent: ``draw()`` gives two views of the same samples, row for row."""
    return train_views(model, embed, draw, lambda z1, z2: nt_xent(z1, z2, temperature), steps, learning_rate,
                       progress)
