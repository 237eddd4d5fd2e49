"""Training our chip encoder on a product's chips, and measuring it on held-out chips.

Tile2Vec on chips: an anchor is a crop of a chip, its positive a crop of the same chip shifted by up to
half a crop (the neighbourhood), its negative a crop of a chip at least two chips away (or of another
tile). Each crop gets its own illumination gain and pixel noise, as another date of the same ground would. Whole blocks of 2 x 2 chips are held out; the score is the share of held-out triplets whose
positive is nearer the anchor than the negative, for the trained network and the same one untrained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from geoembed.core.evaluation import evaluation_problems
from geoembed.core.lineage import weights_version
from geoembed.core.self_supervised import random_dihedral, train_triplets
from geoembed.imagery.encoders.chipnet import ChipNet, ChipNetSpec


class NoChipsError(LookupError):
    """No chip with data is materialized to train on."""


class ChipTrainingParameters(Protocol):
    steps: int
    batch_size: int
    crop_size: int
    learning_rate: float
    margin: float
    max_train_chips: int
    held_out_fraction: float
    seed: int


@dataclass
class TrainingChips:
    """Chips held in memory for training: reflectance (NaN = no data) and where each chip is."""

    reflectance: np.ndarray  # (n, C, S, S) float32
    tile: np.ndarray  # (n,) tile index
    row: np.ndarray
    col: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


def held_out_blocks(chips: TrainingChips, fraction: float, seed: int) -> np.ndarray:
    """True for held-out chips: whole 2 x 2 blocks of chips, so held-out crops are spatially apart from
    training crops (at least one chip always stays on each side)."""
    block = chips.tile.astype(np.int64) * 1_000_000 + (chips.row // 2) * 1000 + chips.col // 2
    blocks = np.unique(block)
    if len(blocks) < 2:
        return np.zeros(len(chips), dtype=bool)
    rng = np.random.default_rng(seed)
    n_held = min(len(blocks) - 1, max(1, int(round(fraction * len(blocks)))))
    return np.isin(block, rng.choice(blocks, size=n_held, replace=False))


class CropTriplets:
    """Draws (anchor, positive, negative) crops from a set of chips."""

    def __init__(self, chips: TrainingChips, members: np.ndarray, crop: int, seed: int):
        self.chips, self.members, self.crop = chips, np.asarray(members), crop
        self.size = chips.reflectance.shape[-1]
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        valid = ~np.isnan(chips.reflectance[:, 0])
        self.valid_integral = valid.cumsum(1, dtype=np.int32).cumsum(2, dtype=np.int32)  # valid pixels of any crop in O(1)
        if len(self.members) < 2:
            raise NoChipsError("at least two chips with data are needed to draw triplets")

    def _valid_share(self, i: int, y: int, x: int) -> float:
        s, c = self.valid_integral[i], self.crop
        total = s[y + c - 1, x + c - 1] - (s[y - 1, x + c - 1] if y else 0) - (s[y + c - 1, x - 1] if x else 0) + (
            s[y - 1, x - 1] if x and y else 0)
        return total / (c * c)

    def _origin(self, i: int, near: tuple[int, int] | None = None) -> tuple[int, int]:
        top = self.size - self.crop
        for _ in range(20):  # prefer crops that are mostly data
            if near is None:
                y, x = self.rng.integers(0, top + 1, size=2)
            else:
                shift = self.crop // 2
                y = int(np.clip(near[0] + self.rng.integers(-shift, shift + 1), 0, top))
                x = int(np.clip(near[1] + self.rng.integers(-shift, shift + 1), 0, top))
            if self._valid_share(i, int(y), int(x)) >= 0.5:
                break
        return int(y), int(x)

    def _distant(self, i: int) -> int:
        c = self.chips
        far = self.members[(c.tile[self.members] != c.tile[i]) | (np.maximum(
            np.abs(c.row[self.members] - c.row[i]), np.abs(c.col[self.members] - c.col[i])) >= 2)]
        pool = far if len(far) else self.members[self.members != i]
        return int(self.rng.choice(pool))

    def _crop(self, i: int, y: int, x: int) -> np.ndarray:
        return self.chips.reflectance[i, :, y:y + self.crop, x:x + self.crop]

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        anchors, positives, negatives = [], [], []
        for i in self.rng.choice(self.members, size=batch):
            origin = self._origin(int(i))
            anchors.append(self._crop(int(i), *origin))
            positives.append(self._crop(int(i), *self._origin(int(i), near=origin)))
            j = self._distant(int(i))
            negatives.append(self._crop(j, *self._origin(j)))
        return tuple(random_dihedral(self._radiometry(np.stack(b)), self.generator, dims=(2, 3))
                     for b in (anchors, positives, negatives))

    def _radiometry(self, batch: np.ndarray) -> torch.Tensor:
        """Another acquisition of the same ground differs in illumination and noise: each crop gets a
        random gain (+-10 %) and pixel noise (1 % of its reflectance), so the encoder learns to ignore both."""
        gain = self.rng.uniform(0.9, 1.1, size=(len(batch), 1, 1, 1)).astype(np.float32)
        noise = 1.0 + 0.01 * self.rng.standard_normal(batch.shape).astype(np.float32)
        return torch.from_numpy(batch * gain * noise)


def triplet_accuracy(model: ChipNet, triplets: CropTriplets, n: int = 512, batch: int = 64) -> float:
    """Share of triplets whose positive is nearer the anchor than the negative (cosine)."""
    hits = total = 0
    with torch.inference_mode():
        for start in range(0, n, batch):
            a, p, q = triplets.draw(min(batch, n - start))
            za, zp, zn = (model.embed(t) for t in (a, p, q))
            hits += int(((za * zp).sum(1) > (za * zn).sum(1)).sum())
            total += len(za)
    return hits / max(total, 1)


@dataclass
class TrainedChipEncoder:
    model: ChipNet
    version: str
    losses: list[float]
    seconds: float
    quality: dict[str, float]  # held-out triplet accuracy: trained, untrained
    train_chips: int
    held_out_chips: int
    problems: list[str]  # why the quality figures cannot be trusted (too few chips)

    @property
    def beats_untrained(self) -> bool:
        return self.quality["trained"] > self.quality["untrained"]


def band_statistics(reflectance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of valid pixels (n, C, S, S)."""
    flat = reflectance.transpose(1, 0, 2, 3).reshape(reflectance.shape[1], -1)
    return np.nanmean(flat, axis=1).astype(np.float32), np.nanstd(flat, axis=1).astype(np.float32)


def train_chip_encoder(spec: ChipNetSpec, chips: TrainingChips, params: ChipTrainingParameters,
                       log: Callable[[str], None] = lambda _: None,
                       warn: Callable[[str], None] | None = None) -> TrainedChipEncoder:
    """Train ChipNet on ``chips`` and score it on held-out blocks of chips."""
    if len(chips) < 2:
        raise NoChipsError(f"{len(chips)} chip(s) with data: at least two are needed to train the chip encoder")
    # At most half a chip: a positive (the anchor shifted by up to half a crop) must differ from its anchor.
    crop = min(params.crop_size, max(8, chips.reflectance.shape[-1] // 2))
    held = held_out_blocks(chips, params.held_out_fraction, params.seed)
    train = np.nonzero(~held)[0]
    test = np.nonzero(held)[0] if held.sum() >= 2 else train  # too few chips to hold out: said in ``problems``
    # A chip yields many training crops: fewer chips than cells suffice.
    problems = evaluation_problems(len(train), int(held.sum()) if held.sum() >= 2 else 0, "chips", min_train=8,
                                   min_held_out=2)
    for problem in problems:
        (warn or log)(f"{problem}; the quality figures of this encoder cannot be trusted")
    mean, std = band_statistics(chips.reflectance[train])
    torch.manual_seed(params.seed)
    untrained = ChipNet(spec)
    untrained.set_normalisation(torch.from_numpy(mean), torch.from_numpy(std))
    model = ChipNet(spec)
    model.load_state_dict(untrained.state_dict())
    sampler = CropTriplets(chips, train, crop, params.seed)
    log(f"training the chip encoder on {len(train)} chips ({crop} px crops), {len(test)} held out")
    start = time.perf_counter()
    result = train_triplets(model, model.embed, lambda: sampler.draw(params.batch_size), params.steps,
                            params.learning_rate, params.margin,
                            progress=lambda step, loss: log(f"training: step {step}/{params.steps}, loss {loss:.4f}"))
    quality = {
        "trained": round(triplet_accuracy(model, CropTriplets(chips, test, crop, params.seed + 1)), 4),
        "untrained": round(triplet_accuracy(untrained.eval(), CropTriplets(chips, test, crop, params.seed + 1)), 4),
    }
    version = weights_version(spec.to_json(), model.state_dict())
    log(f"chip encoder {version}: held-out triplet accuracy {quality}")
    return TrainedChipEncoder(model.eval(), version, result.losses, time.perf_counter() - start, quality,
                              len(train), int(held.sum()) if held.sum() >= 2 else 0, problems)


def load_training_chips(datacubes: list[tuple[str, object, np.ndarray]], bands: list[str], max_chips: int,
                        seed: int) -> TrainingChips:
    """Up to ``max_chips`` chips with data from the product's datacubes ((tile, dataset, datacube
    positions of its chips with data)), drawn evenly at random, as reflectance in ``bands``."""
    candidates = []
    tiles = {t: i for i, t in enumerate(sorted({t for t, _, _ in datacubes}))}
    for tile, ds, with_data in datacubes:
        for index in with_data:
            candidates.append((tile, ds, int(index)))
    if len(candidates) < 2:
        raise NoChipsError(f"{len(candidates)} chip(s) with data are materialized: materialize scene_chips first "
                           "(the encoder trains on at least two)")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(candidates), size=min(max_chips, len(candidates)), replace=False))
    reflectance, tile, row, col = [], [], [], []
    for i in chosen:
        name, ds, index = candidates[i]
        chip = ds.isel(chip=index)
        reflectance.append(chip["reflectance"].sel(band=bands).values.astype(np.float32))
        tile.append(tiles[name])
        row.append(int(chip["row"].values))
        col.append(int(chip["col"].values))
    return TrainingChips(np.stack(reflectance), np.array(tile), np.array(row), np.array(col))
