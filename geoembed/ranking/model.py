"""The ranking model (the seed's ResNetRankNet, with our own CNN): the imagery pipeline's ChipNet trunk over
RGB and an MLP head giving one score per image; trained on annotated pairs with a RankNet (or margin) loss,
the trunk frozen for the first epochs, SGD with momentum and ReduceLROnPlateau, the best validation model
kept. Images are decoded and resized here; the saved model carries its image size and normalisation."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from geoembed.core.checkpoints import checkpoint_bytes, read_checkpoint
from geoembed.core.lineage import weights_version
from geoembed.imagery.encoders.chipnet import ChipNet, ChipNetSpec
from geoembed.ranking.losses import margin_ranking_loss, ranknet_loss
from geoembed.ranking.pairs import with_reversed
from geoembed.ranking.settings import RankingTraining
from geoembed.ranking.stations import StationInputError

RGB = ("red", "green", "blue")


def load_images(paths: list[str], size: int, station: str, folder: str | os.PathLike[str] = "") -> np.ndarray:
    """(N, 3, size, size) float32 in [0, 1]: each image (``paths`` relative to ``folder``) decoded, as RGB,
    resized (bilinear). A file that cannot be decoded raises ``StationInputError`` naming the station and
    the file."""
    out = np.empty((len(paths), 3, size, size), np.float32)
    for i, name in enumerate(paths):
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except (UnidentifiedImageError, OSError) as exc:
            raise StationInputError(f"station {station}: image {path!r} cannot be decoded ({exc})") from None
        out[i] = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0
    return out


def mean_brightness(images: np.ndarray) -> np.ndarray:
    """The brightness baseline: each image's mean over pixels and channels."""
    return images.reshape(len(images), -1).mean(axis=1)


@dataclass(frozen=True)
class RankerSpec:
    image_size: int
    width: int
    hidden: tuple[int, ...]

    def to_json(self) -> dict:
        return {"kind": "chipnet-ranknet", "image_size": self.image_size, "width": self.width,
                "hidden": list(self.hidden)}


class RankingNet(nn.Module):
    """``forward(images (B, 3, S, S) in [0, 1]) -> scores (B,)``: ChipNet trunk, mean pooled, MLP head."""

    def __init__(self, spec: RankerSpec):
        super().__init__()
        self.spec = spec
        self.backbone = ChipNet(ChipNetSpec(RGB, embedding_dim=8, patch_dim=4, patch_size=16, width=spec.width))
        layers: list[nn.Module] = []
        width = self.backbone.spec.channels(self.backbone.spec.stages)
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(0.1)]
            width = hidden
        self.head = nn.Sequential(*layers, nn.Linear(width, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.feature_map(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)).squeeze(1)


def new_ranker(spec: RankerSpec, seed: int, train_images: np.ndarray | None = None) -> RankingNet:
    """An untrained ranker (weights drawn from ``seed``), normalised by the training images' channel
    statistics when given."""
    torch.manual_seed(seed)
    model = RankingNet(spec)
    if train_images is not None:
        x = torch.from_numpy(train_images)
        model.backbone.set_normalisation(x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
    return model.eval()


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    validation_loss: float
    validation_pair_accuracy: float
    learning_rate: float
    backbone_frozen: bool


@dataclass
class TrainedRanker:
    model: RankingNet
    version: str
    best_epoch: int
    epochs: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0


def _pair_loss(kind: str) -> Callable:
    return ranknet_loss if kind == "ranknet" else margin_ranking_loss


def _evaluate(model: RankingNet, images: torch.Tensor, a, b, labels, loss_fn) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        scores = torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)])
    sa, sb = scores[a], scores[b]
    loss = float(loss_fn(sa, sb, labels))
    ordered = labels != 0
    accuracy = float(((sa - sb)[ordered].sign() == labels[ordered].float()).float().mean()) if ordered.any() else 0.0
    return loss, accuracy


def train_ranker(images: np.ndarray, left: np.ndarray, right: np.ndarray, labels: np.ndarray, train: np.ndarray,
                 config: RankingTraining, log: Callable[[str], None] = lambda _: None,
                 device: torch.device | None = None) -> TrainedRanker:
    """Train on the pairs (left[i], right[i], labels[i]) of ``images`` (indices) where ``train``; the rest
    validate. Reversed pairs are added to the training side; horizontal flips augment it. The model of the
    epoch with the lowest validation loss is kept."""
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    train_ids = np.unique(np.concatenate([left[train], right[train]]))
    spec = RankerSpec(images.shape[-1], config.backbone_width, tuple(config.hidden))
    device = device or torch.device("cpu")
    model = new_ranker(spec, config.seed, images[train_ids]).to(device)
    x = torch.from_numpy(images).to(device)
    ta, tb, tl = with_reversed(left[train], right[train], labels[train])
    va, vb, vl = (torch.from_numpy(v[~train]).to(device) for v in (left, right, labels))
    loss_fn = _pair_loss(config.loss)
    params = list(model.parameters())
    optimiser = (torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9) if config.optimizer == "sgd"
                 else torch.optim.Adam(params, lr=config.learning_rate))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=2)
    best = (np.inf, -1, copy.deepcopy(model.state_dict()))
    history: list[EpochRecord] = []
    for epoch in range(config.epochs):
        frozen = epoch < config.freeze_backbone_epochs
        for p in model.backbone.parameters():
            p.requires_grad_(not frozen)
        model.train()
        if frozen:
            model.backbone.eval()  # frozen means its batch statistics too
        order = rng.permutation(len(ta))
        losses = []
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            ids, inverse = np.unique(np.concatenate([ta[batch], tb[batch]]), return_inverse=True)
            xb = x[ids]
            flip = torch.from_numpy(rng.random(len(ids)) < 0.5).to(device)
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            scores = model(xb)
            n = len(batch)
            loss = loss_fn(scores[inverse[:n]], scores[inverse[n:]], torch.from_numpy(tl[batch]).to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        val_loss, val_accuracy = _evaluate(model, x, va, vb, vl, loss_fn)
        scheduler.step(val_loss)
        record = EpochRecord(epoch, float(np.mean(losses)), val_loss, val_accuracy,
                             optimiser.param_groups[0]["lr"], frozen)
        history.append(record)
        log(f"epoch {epoch + 1}/{config.epochs}: train loss {record.train_loss:.4f}, validation loss {val_loss:.4f}, "
            f"validation pair accuracy {val_accuracy:.3f}{' (backbone frozen)' if frozen else ''}")
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model = model.cpu().eval()
    version = weights_version(spec.to_json(), model.state_dict())
    return TrainedRanker(model, version, best[1], history, time.perf_counter() - started)


def score(model: RankingNet, images: np.ndarray, infer: Callable | None = None) -> np.ndarray:
    """One score per image (``infer``: the inference device's batched call; default CPU)."""
    if infer is not None:
        return np.asarray(infer(model.eval(), images)).reshape(-1)
    with torch.inference_mode():
        return torch.cat([model.eval()(torch.from_numpy(images[i : i + 256])) for i in range(0, len(images), 256)]
                         ).numpy() if len(images) else np.zeros(0, np.float32)


def save_ranker(model: RankingNet, extra: dict) -> bytes:
    return checkpoint_bytes(model, {"spec": model.spec.to_json()}, extra)


def load_ranker(data: bytes) -> tuple[RankingNet, dict]:
    payload = read_checkpoint(data)
    spec = payload.pop("spec")
    model = RankingNet(RankerSpec(int(spec["image_size"]), int(spec["width"]), tuple(spec["hidden"])))
    model.load_state_dict(payload.pop("state_dict"))
    return model.eval(), payload
