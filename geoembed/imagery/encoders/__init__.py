"""Chip encoders behind one interface: a module whose ``forward(pixels, time, latlon)`` returns a
class-level embedding per chip and patch-level embeddings, the bands it reads, how it prepares
reflectance, and its content version. Two kinds: our own ChipNet (trained on the product's chips) and
Clay v1.5 (weights from a local checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import numpy as np
from torch import nn

from geoembed.core.checkpoints import checkpoint_bytes, read_checkpoint
from geoembed.core.lineage import weights_version
from geoembed.imagery.encoders.chipnet import ChipNet, ChipNetSpec
from geoembed.imagery.encoders.clay import (
    CLAY_SIZES, clay_bands, clay_latlon, clay_pixels, clay_time, load_clay_encoder, spec_json,
)


@dataclass
class LoadedEncoder:
    """An encoder ready for inference."""

    kind: str  # "geoembed" or "clay"
    model: nn.Module
    bands: list[str]
    version: str
    embedding_dim: int
    patch_dim: int
    keep_patches: bool
    prepare: Callable[[np.ndarray], np.ndarray]  # reflectance (B, C, H, W) -> the model's pixels
    description: dict = field(default_factory=dict)  # architecture, checkpoint checksum...


def chipnet_encoder(model: ChipNet, version: str) -> LoadedEncoder:
    spec = model.spec
    return LoadedEncoder("geoembed", model.eval(), list(spec.bands), version, spec.embedding_dim, spec.patch_dim,
                         True, lambda r: np.ascontiguousarray(r, dtype=np.float32), spec.to_json())


def save_chipnet(model: ChipNet, extra: dict) -> bytes:
    return checkpoint_bytes(model, {"spec": model.spec.to_json()}, extra)


def load_chipnet(data: bytes) -> tuple[ChipNet, dict]:
    payload = read_checkpoint(data)
    spec = dict(payload.pop("spec"))
    spec.pop("kind", None)
    model = ChipNet(ChipNetSpec(**{**spec, "bands": tuple(spec["bands"])}))
    model.load_state_dict(payload.pop("state_dict"))
    return model.eval(), payload


def clay_encoder(checkpoint: str, size: str, bands: list[str] | None, sha256: str | None,
                 keep_patches: bool) -> LoadedEncoder:
    chosen = clay_bands(bands)
    model, digest = load_clay_encoder(checkpoint, size, chosen, sha256)
    description = {**spec_json(CLAY_SIZES[size], chosen), "size": size, "checkpoint": checkpoint,
                   "checkpoint_sha256": digest}
    version = weights_version(description | {"checkpoint": ""}, model.state_dict())
    return LoadedEncoder("clay", model, chosen, version, CLAY_SIZES[size].dim, CLAY_SIZES[size].dim, keep_patches,
                         lambda r: clay_pixels(r, chosen), description)


@dataclass
class ChipInputs:
    """What the encoder reads for a set of chips, one batch at a time (``inputs[a:b]``): the chips'
    prepared pixels (read lazily from the datacube), their time and lat/lon encodings."""

    read: Callable[[np.ndarray], np.ndarray]  # datacube positions -> reflectance (n, C, S, S) in the encoder's bands
    indices: np.ndarray  # datacube positions of the chips to embed
    encoder: LoadedEncoder
    time: np.ndarray  # (n, 4)
    latlon: np.ndarray  # (n, 4)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chosen = self.indices[rows]
        pixels = np.asarray(self.read(chosen), dtype=np.float32)
        return self.encoder.prepare(pixels), self.time[rows], self.latlon[rows]


def chip_metadata(acquired: datetime, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clay's time and lat/lon encodings for chips of one acquisition (ChipNet ignores them)."""
    return np.tile(clay_time(acquired), (len(lat), 1)), clay_latlon(lat, lon)
