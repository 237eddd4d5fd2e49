"""Batched model inference, the same for every encoder: every input is embedded (the last partial
batch included), on a GPU with optional bf16 autocast or on the CPU, and the outputs come back as
float32 numpy arrays. A model may return one tensor or a tuple (e.g. class and patch embeddings)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

Outputs = torch.Tensor | tuple[torch.Tensor, ...]


def batched_inference(
    model: Callable[[torch.Tensor], Outputs],
    inputs: np.ndarray | Sequence,
    device: torch.device,
    batch_size: int,
    bf16: bool,
    finish: Callable[[Outputs], Outputs] | None = None,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Run ``model`` over ``inputs`` in batches of ``batch_size`` rows.

    ``inputs``: anything whose slices ``inputs[a:b]`` become arrays (numpy, Zarr, a lazy xarray
    variable), or tuples of arrays passed to the model as separate arguments (e.g. pixels and their
    metadata), so a large input is read one batch at a time. ``bf16`` autocasts on CUDA only (the caller
    checks the GPU supports it); the CPU runs float32. ``finish`` runs on each batch's outputs outside
    autocast, in float32 (e.g. re-normalising vectors that bf16 left off unit norm by ~1e-3).
    Returns an array (or a tuple of arrays, as the model returns) with one row per input."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    n = len(inputs)
    autocast = bf16 and device.type == "cuda"
    outputs: list[np.ndarray] | None = None
    single = True
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            chunk = inputs[start : start + batch_size]
            arrays = chunk if isinstance(chunk, tuple) else (chunk,)
            tensors = [torch.from_numpy(np.ascontiguousarray(np.asarray(a))).to(device) for a in arrays]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                result = model(*tensors)
            single = isinstance(result, torch.Tensor)
            parts = tuple(t.float() for t in ((result,) if single else result))
            if finish is not None:
                finished = finish(parts[0] if single else parts)
                parts = (finished,) if isinstance(finished, torch.Tensor) else tuple(finished)
            if outputs is None:
                outputs = [np.empty((n, *p.shape[1:]), dtype=np.float32) for p in parts]
            for out, part in zip(outputs, parts):
                out[start : start + len(tensors[0])] = part.cpu().numpy()
    if outputs is None:  # no input: shapes are unknown, so nothing to return but empty rows
        return np.empty((0,), dtype=np.float32)
    return outputs[0] if single else tuple(outputs)
