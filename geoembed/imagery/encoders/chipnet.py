"""Our own chip encoder: a small fully convolutional network over a chip's bands, trained
self-supervised (triplet loss: a crop's neighbour is alike, a crop of a distant chip is not).

Input: reflectance (B, C, H, W) of the bands it was trained on; it normalises them itself (per-band
mean and std of its training chips, kept as buffers) and treats no data (NaN) as the band mean. Output:
a class-level unit vector per chip (global average of the last feature map, projected) and unit
patch vectors on a grid of ``patch_size`` pixels (a 1 x 1 projection of the same feature map).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ChipNetSpec:
    bands: tuple[str, ...]
    embedding_dim: int = 128
    patch_dim: int = 64
    patch_size: int = 16
    width: int = 32

    @property
    def stages(self) -> int:
        """Stride-2 stages after the 4 x 4 patchifying stem, down to one feature per patch."""
        return max(0, int(math.log2(self.patch_size)) - 2)

    def channels(self, stage: int) -> int:
        return min(self.width * 2 ** stage, 256)

    def to_json(self) -> dict:
        return {"kind": "geoembed", **asdict(self), "bands": list(self.bands)}


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ChipNet(nn.Module):
    """``forward(reflectance, time, latlon)`` -> (class embedding (B, D), patch embeddings (B, L, Dp)).
    ``time`` and ``latlon`` are accepted for the encoder interface and not used."""

    def __init__(self, spec: ChipNetSpec):
        super().__init__()
        self.spec = spec
        # A 4 x 4 patchifying stem (cheap: the 10 m pixels of a band mean little alone), then stride-2
        # stages of two 3 x 3 convolutions each.
        layers: list[nn.Module] = [nn.Conv2d(len(spec.bands), spec.channels(0), 4, stride=4, bias=False),
                                   nn.BatchNorm2d(spec.channels(0)), nn.ReLU(inplace=True)]
        for stage in range(1, spec.stages + 1):
            layers += _conv(spec.channels(stage - 1), spec.channels(stage), 2)
            layers += _conv(spec.channels(stage), spec.channels(stage), 1)
        self.features = nn.Sequential(*layers)
        last = spec.channels(spec.stages)
        self.patch_head = nn.Conv2d(last, spec.patch_dim, 1)
        self.head = nn.Linear(last, spec.embedding_dim)
        self.register_buffer("band_mean", torch.zeros(len(spec.bands)))
        self.register_buffer("band_std", torch.ones(len(spec.bands)))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.band_mean.copy_(mean)
        self.band_std.copy_(torch.clamp(std, min=1e-4))

    def feature_map(self, reflectance: torch.Tensor) -> torch.Tensor:
        x = (reflectance - self.band_mean[None, :, None, None]) / self.band_std[None, :, None, None]
        return self.features(torch.nan_to_num(x, nan=0.0))

    def pooled(self, reflectance: torch.Tensor) -> torch.Tensor:
        """The last feature map averaged over the chip: (B, pooled_dim), what a classifier head reads."""
        return self.feature_map(reflectance).mean(dim=(2, 3))

    @property
    def pooled_dim(self) -> int:
        return self.spec.channels(self.spec.stages)

    def last_block(self) -> nn.Module:
        """The last stride-2 stage (two convolutions with batch norm and ReLU), or the stem when there is none."""
        return self.features[-6:] if self.spec.stages else self.features

    def embed(self, reflectance: torch.Tensor) -> torch.Tensor:
        """Class-level unit vectors only (what training compares)."""
        return F.normalize(self.head(self.feature_map(reflectance).mean(dim=(2, 3))).float(), dim=1)

    def forward(self, reflectance: torch.Tensor, time: torch.Tensor | None = None, latlon: torch.Tensor | None = None):
        f = self.feature_map(reflectance)
        cls = F.normalize(self.head(f.mean(dim=(2, 3))).float(), dim=1)
        patches = F.normalize(self.patch_head(f).float(), dim=1).flatten(2).transpose(1, 2)
        return cls, patches
