"""Model checkpoints as bytes, one format for every pipeline's networks: what rebuilds the network (its
spec, plain JSON-able values), its weights under ``state_dict``, and extra fields (quality figures, the
versions of what made it)."""

from __future__ import annotations

import io

import torch
from torch import nn


def checkpoint_bytes(model: nn.Module, rebuild: dict, extra: dict) -> bytes:
    """``rebuild`` (e.g. ``{"spec": ...}``) and ``extra`` at the top level, the weights under ``state_dict``."""
    buffer = io.BytesIO()
    torch.save({**rebuild, "state_dict": model.state_dict(), **extra}, buffer)
    return buffer.getvalue()


def read_checkpoint(data: bytes, device: torch.device | str = "cpu", weights_only: bool = True) -> dict:
    """A checkpoint's fields (callers pop what rebuilds their network, then ``state_dict``; the rest is extra)."""
    return torch.load(io.BytesIO(data), map_location=device, weights_only=weights_only)
