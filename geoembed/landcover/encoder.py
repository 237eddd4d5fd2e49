"""The self-supervised land-cover encoder: a small CNN trained contrastively on random crops of each
window (SimCLR's NT-Xent, with a composition loss that keeps what each view is made of; the default) or
with a triplet loss over neighbouring cells (Tile2Vec style).

Input: a window of class indices (B, S, S), or with stacked sources (B, C, S, S) channels: class indices
of every categorical source (one shared token vocabulary, embeddings summed) and continuous
measurements (robustly normalised, a 1x1 convolution into the token space). The map is average-pooled
to at most 16 x 16 early (the cost per cell stays flat whatever the window), then three strided
convolutions and a linear head give an L2-normalised vector.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from typing import Callable

import h3.api.basic_int as h3i
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoembed.core.checkpoints import checkpoint_bytes, read_checkpoint
from geoembed.core.inference import batched_inference
from geoembed.core.lineage import weights_version
from geoembed.core.self_supervised import (
    nt_xent, random_crops, random_dihedral, train_contrastive, train_triplets, train_views,
)

POOLED_SIZE = 16


@dataclass(frozen=True)
class EncoderSpec:
    """Architecture hyper-parameters: enough to rebuild the network (normalisation of continuous
    sources included: the model owns what it was trained with)."""

    n_tokens: int  # classes + 1 (no data)
    window_size: int
    embedding_dim: int
    token_dim: int = 16
    width: int = 64
    stacked_tokens: tuple[int, ...] = ()  # per stacked categorical source: classes + 1
    continuous_centre: tuple[float, ...] = ()  # per continuous source: the training windows' median
    continuous_scale: tuple[float, ...] = ()  # and robust spread (interquartile range / 1.349)

    def __post_init__(self) -> None:
        for name in ("stacked_tokens", "continuous_centre", "continuous_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def channels(self) -> int:
        """Input channels: 1 (primary class ids) + stacked categorical + continuous sources."""
        return 1 + len(self.stacked_tokens) + len(self.continuous_centre)

    def to_json(self) -> str:
        # Fields of stacked products only appear when used: a single-source spec hashes as before.
        return json.dumps({k: v for k, v in asdict(self).items() if v != ()}, sort_keys=True)


class LandCoverEncoder(nn.Module):
    """Input: (B, S, S) primary class ids, or (B, C, S, S) float channels (see ``stores.model_inputs``)."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        w = spec.width
        sizes = (spec.n_tokens, *spec.stacked_tokens)
        # One vocabulary for every categorical source: source i's class k is token offsets[i] + k.
        self.tokens = nn.Embedding(sum(sizes), spec.token_dim)
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()], dtype=torch.long),
                             persistent=False)
        self.n_categorical = len(sizes)
        self.continuous: nn.Module | None = None
        if spec.continuous_centre:
            self.continuous = nn.Conv2d(len(spec.continuous_centre), spec.token_dim, 1)
            self.register_buffer("centre", torch.tensor(spec.continuous_centre).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("scale", torch.tensor(spec.continuous_scale).view(1, -1, 1, 1), persistent=False)
        self.pool = max(1, spec.window_size // POOLED_SIZE)
        self.features = nn.Sequential(
            nn.Conv2d(spec.token_dim, w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * w, spec.embedding_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.dim() == 3:
            x = self.embed_tokens(windows.long()[:, None])
        else:
            x = self.embed_tokens(windows[:, : self.n_categorical].long())
            if self.continuous is not None:
                x = x + self.embed_continuous(windows[:, self.n_categorical :].float())
        x = self.features(x).flatten(1)
        return F.normalize(self.head(x).float(), dim=1)

    def embed_tokens(self, windows: torch.Tensor) -> torch.Tensor:
        """Token embeddings of (B, K, S, S) class ids of K categorical sources, summed over the sources and
        average-pooled to at most POOLED_SIZE^2: (B, token_dim, H, W).

        Embedding then averaging is linear, so for pooled windows we average one-hot class counts per
        block (a scatter-add over integer ids) and apply the embedding once per block: the same result
        as embedding every pixel, without a (B, S, S, token_dim) tensor."""
        ids = windows + self.offsets.view(1, -1, 1, 1)
        if self.pool == 1:
            return self.tokens(ids).sum(1).permute(0, 3, 1, 2)
        b, k, s, _ = ids.shape
        p, n = self.pool, self.tokens.num_embeddings
        h = s // p
        rows = torch.arange(s, device=ids.device) // p
        block = (rows[:, None] * h + rows[None, :]).reshape(1, 1, -1)
        index = (block * n + ids.reshape(b, k, -1)).reshape(b, -1)
        counts = torch.zeros(b, h * h * n, device=ids.device, dtype=self.tokens.weight.dtype)
        counts.scatter_add_(1, index, torch.ones_like(index, dtype=counts.dtype))
        fractions = counts.reshape(b, h, h, n) / float(p * p)
        return (fractions @ self.tokens.weight).permute(0, 3, 1, 2)

    def embed_continuous(self, values: torch.Tensor) -> torch.Tensor:
        """Continuous sources normalised robustly (invalid pixels at the median), pooled like the tokens,
        mapped to the token space by a 1x1 convolution: (B, token_dim, H, W)."""
        z = torch.nan_to_num((values - self.centre) / self.scale, nan=0.0).clamp(-10.0, 10.0)
        if self.pool > 1:
            z = F.avg_pool2d(z, self.pool)
        return self.continuous(z.to(self.tokens.weight.dtype))


def robust_normalisation(values: np.ndarray, max_values: int = 2_000_000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel of (n, C, S, S) measurements (NaN = invalid): the median and the interquartile range
    / 1.349 (the standard deviation of a normal with that IQR; robust to outliers and heavy tails).
    A channel without spread gets scale 1."""
    rng = np.random.default_rng(seed)
    centre, scale = [], []
    for c in range(values.shape[1]):
        flat = values[:, c].reshape(-1)
        flat = flat[np.isfinite(flat)]
        if len(flat) > max_values:
            flat = rng.choice(flat, max_values, replace=False)
        if len(flat) == 0:
            centre.append(0.0), scale.append(1.0)
            continue
        q25, q50, q75 = np.percentile(flat, [25, 50, 75])
        spread = (q75 - q25) / 1.349
        centre.append(float(q50))
        scale.append(float(spread) if spread > 0 else 1.0)
    return tuple(centre), tuple(scale)


def build_encoder(spec: EncoderSpec, seed: int) -> LandCoverEncoder:
    torch.manual_seed(seed)
    return LandCoverEncoder(spec)


def model_version(model: LandCoverEncoder) -> str:
    """Content hash of the architecture and the weights (16 hex digits)."""
    return weights_version(model.spec.to_json(), model.state_dict())


# ---------------------------------------------------------------------------------------------
# Triplet sampling: positives are near neighbours, negatives come from another region.
# ---------------------------------------------------------------------------------------------


class TripletSampler:
    """Draws (anchor, positive, negative) row indices over a set of embeddable cells.

    positive: a cell within ``positive_rings`` grid steps of the anchor (the nearest context);
    negative: a cell of a different region, so at least a region's width away."""

    def __init__(self, cells: np.ndarray, regions: np.ndarray, positive_rings: int = 2, seed: int = 0):
        self.cells = np.asarray(cells, dtype=np.uint64)
        self.regions = np.asarray(regions, dtype=np.uint64)
        self.rng = np.random.default_rng(seed)
        index = {int(c): i for i, c in enumerate(self.cells)}
        neighbours: list[np.ndarray] = []
        for c in self.cells:
            near = [index[n] for n in h3i.grid_disk(int(c), positive_rings) if n != c and n in index]
            neighbours.append(np.array(near, dtype=np.int64))
        self.neighbours = neighbours
        self.anchors = np.array([i for i, n in enumerate(neighbours) if len(n)], dtype=np.int64)
        if len(self.anchors) == 0:
            raise ValueError("no cell has an embeddable neighbour: too few cells to train on")
        self.distinct_regions = np.unique(self.regions)

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        anchor = self.rng.choice(self.anchors, size=batch_size)
        positive = np.array([self.rng.choice(self.neighbours[a]) for a in anchor], dtype=np.int64)
        negative = self.rng.integers(0, len(self.cells), size=batch_size)
        if len(self.distinct_regions) > 1:
            same = self.regions[negative] == self.regions[anchor]
            while same.any():
                negative[same] = self.rng.integers(0, len(self.cells), size=int(same.sum()))
                same = self.regions[negative] == self.regions[anchor]
        return anchor, positive, negative


@dataclass
class TrainingResult:
    model: LandCoverEncoder
    losses: list[float]
    seconds: float
    steps: int


def train_triplet(
    model: LandCoverEncoder,
    windows: np.ndarray,
    sampler: TripletSampler,
    steps: int,
    batch_size: int,
    learning_rate: float,
    margin: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    """Train in place on CPU or the model's device; returns the per-step loss curve."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(windows)

    def draw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, p, n = sampler.sample(batch_size)
        return tuple(random_dihedral(data[torch.from_numpy(idx)], generator, dims=(-2, -1)).to(device)
                     for idx in (a, p, n))

    result = train_triplets(model, model, draw, steps, learning_rate, margin, progress)
    return TrainingResult(model, result.losses, result.seconds, steps)


def class_shares(ids: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Share of each token (class ids + 1, 0 = no data) among the pixels of each of (B, S, S) windows: (B, n_tokens)."""
    flat = ids.reshape(len(ids), -1).long()
    counts = torch.zeros(len(ids), n_tokens, device=ids.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
    return counts / flat.shape[1]


@dataclass
class WindowComposition:
    """What a batch of windows is made of: per categorical source the class shares (B, tokens), and per
    continuous source the mean and standard deviation of its normalised values, (B, 2 x sources) or None."""

    shares: list[torch.Tensor]
    moments: torch.Tensor | None

    @staticmethod
    def of(windows: torch.Tensor, spec: EncoderSpec) -> WindowComposition:
        if windows.dim() == 3:
            return WindowComposition([class_shares(windows, spec.n_tokens)], None)
        sizes = (spec.n_tokens, *spec.stacked_tokens)
        shares = [class_shares(windows[:, k], n) for k, n in enumerate(sizes)]
        if not spec.continuous_centre:
            return WindowComposition(shares, None)
        centre = torch.tensor(spec.continuous_centre, device=windows.device).view(1, -1, 1, 1)
        scale = torch.tensor(spec.continuous_scale, device=windows.device).view(1, -1, 1, 1)
        # Normalised as the encoder normalises its input (invalid pixels at the median).
        z = torch.nan_to_num((windows[:, len(sizes):] - centre) / scale, nan=0.0).clamp(-10.0, 10.0).flatten(2)
        return WindowComposition(shares, torch.cat([z.mean(2), z.std(2)], dim=1))

    @staticmethod
    def concatenated(parts: list[WindowComposition]) -> WindowComposition:
        moments = None if parts[0].moments is None else torch.cat([p.moments for p in parts])
        return WindowComposition([torch.cat(s) for s in zip(*(p.shares for p in parts))], moments)


class CompositionDecoder(nn.Module):
    """A linear map from embeddings to every source's composition, used in training only: cross-entropy
    against each categorical source's class shares, squared error on the continuous moments."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.sizes = [spec.n_tokens, *spec.stacked_tokens]
        self.linear = nn.Linear(spec.embedding_dim, sum(self.sizes) + 2 * len(spec.continuous_centre))

    def loss(self, embeddings: torch.Tensor, target: WindowComposition) -> torch.Tensor:
        out = self.linear(embeddings).split([*self.sizes, self.linear.out_features - sum(self.sizes)], dim=1)
        # Probabilities as targets: the cross-entropy is lowest when the decoded shares are the window's.
        terms = [F.cross_entropy(logits, shares) for logits, shares in zip(out, target.shares)]
        if target.moments is not None:
            terms.append(F.mse_loss(out[-1], target.moments))
        return torch.stack(terms).mean()


class CropViews:
    """Draws two random views (crops under rotations and flips) of a random batch of windows; ``composition``
    says what the latest draw's views are made of (both views concatenated), for the composition loss."""

    def __init__(self, windows: np.ndarray, batch_size: int, min_crop_share: float, spec: EncoderSpec, seed: int,
                 device: torch.device):
        self.data = torch.from_numpy(windows)
        self.batch_size, self.min_crop_share, self.spec, self.device = batch_size, min_crop_share, spec, device
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.views: tuple[torch.Tensor, torch.Tensor] | None = None

    def view(self, batch: torch.Tensor) -> torch.Tensor:
        crop = random_crops(batch, self.generator, self.min_crop_share)
        return random_dihedral(crop, self.generator, dims=(-2, -1)).to(self.device)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.data[torch.from_numpy(self.rng.integers(0, len(self.data), self.batch_size))]
        self.views = self.view(batch), self.view(batch)
        return self.views

    @property
    def composition(self) -> WindowComposition:
        """Computed when asked (NT-Xent alone never asks)."""
        if self.views is None:
            raise RuntimeError("no views drawn yet")
        return WindowComposition.concatenated([WindowComposition.of(v, self.spec) for v in self.views])


def train_crop_contrastive(
    model: LandCoverEncoder,
    windows: np.ndarray,
    steps: int,
    batch_size: int,
    learning_rate: float,
    temperature: float,
    min_crop_share: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
    composition_weight: float = 0.0,
) -> TrainingResult:
    """Train in place with NT-Xent: the two views of a window are random crops (at least
    ``min_crop_share`` of its edge, resized back) under random rotations and flips; the batch's other
    windows are the negatives. Returns the per-step loss curve.

    With ``composition_weight`` > 0 a linear decoder (used in training only, then dropped) also predicts
    what each view is made of from its embedding (``CompositionDecoder``: every categorical source's class
    shares, every continuous source's mean and spread), weighted by ``composition_weight``: crop invariance
    alone lets go of how much of each class a window holds, the composition loss keeps it in the vector."""
    device = next(model.parameters()).device
    draw = CropViews(windows, batch_size, min_crop_share, model.spec, seed, device)
    if composition_weight <= 0:
        result = train_contrastive(model, model, draw, steps, learning_rate, temperature, progress)
        return TrainingResult(model, result.losses, result.seconds, steps)
    decoder = CompositionDecoder(model.spec).to(device)

    def loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        composition = decoder.loss(torch.cat([z1, z2]), draw.composition)
        return nt_xent(z1, z2, temperature) + composition_weight * composition

    result = train_views(nn.ModuleList([model, decoder]), model, draw, loss, steps, learning_rate, progress)
    return TrainingResult(model, result.losses, result.seconds, steps)


# ---------------------------------------------------------------------------------------------
# Inference and export
# ---------------------------------------------------------------------------------------------


def renormalise(z: torch.Tensor) -> torch.Tensor:
    """Unit vectors in float32 (bf16 arithmetic leaves norms off by ~1e-3)."""
    return F.normalize(z.float(), dim=1)


def embed(
    model: nn.Module, windows: np.ndarray, device: torch.device, batch_size: int, bf16: bool
) -> np.ndarray:
    """Embed every window (the last partial batch included), returning float32 unit vectors."""
    if len(windows) == 0:
        return np.empty((0, model.spec.embedding_dim), dtype=np.float32)
    return batched_inference(model, windows, device, batch_size, bf16, finish=renormalise)


def save_checkpoint(model: LandCoverEncoder, extra: dict) -> bytes:
    return checkpoint_bytes(model, {"spec": asdict(model.spec)}, extra)


def load_checkpoint(data: bytes, device: torch.device | str = "cpu") -> tuple[LandCoverEncoder, dict]:
    payload = read_checkpoint(data, device, weights_only=False)
    model = LandCoverEncoder(EncoderSpec(**payload.pop("spec")))
    model.load_state_dict(payload.pop("state_dict"))
    return model.to(device).eval(), payload


def export_torchscript(model: LandCoverEncoder) -> bytes:
    """A portable TorchScript module (loads with torch.jit.load, no geoembed import needed)."""
    s, c = model.spec.window_size, model.spec.channels
    example = torch.zeros((2, s, s), dtype=torch.long) if c == 1 else torch.zeros((2, c, s, s))
    traced = torch.jit.trace(model.cpu().eval(), example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def flops_per_cell(spec: EncoderSpec) -> float:
    """Multiply-accumulates of one forward pass (for reporting)."""
    s = spec.window_size // max(1, spec.window_size // POOLED_SIZE)
    macs, c_in = 0, spec.token_dim
    for c_out in (spec.width, spec.width, 2 * spec.width):
        s = math.ceil(s / 2)
        macs += s * s * c_out * c_in * 9
        c_in = c_out
    pooled = spec.window_size // max(1, spec.window_size // POOLED_SIZE)
    continuous = len(spec.continuous_centre) * spec.token_dim * pooled * pooled
    return float(macs + continuous + 2 * spec.width * spec.embedding_dim)
