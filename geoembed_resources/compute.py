"""The inference device: a GPU when there is one (bf16 autocast where supported), else the CPU."""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import dagster as dg
import numpy as np
import torch
from pydantic import Field

from geoembed.core.inference import Outputs, batched_inference


GPU_BATCH_SIZE = 4096
CPU_BATCH_SIZE = 256


class InferenceDevice(dg.ConfigurableResource):
    """Where model inference runs. Inference steps also sit in the Dagster pool ``gpu``."""

    device: Literal["auto", "cuda", "cpu"] = Field(default="auto", description="auto: CUDA if available.")
    batch_size: int | None = Field(default=None, ge=1, description=(
        "Inputs (cells, chips) per forward pass; default 4,096 on a GPU and 256 on the CPU, where a batch's "
        "activations then stay in the caches (the land-cover encoder, 2 cores: 67,224 cells/s at 256, "
        "31,512 at 1,024, 22,207 at 4,096)."))
    bf16: bool = Field(default=True, description="bf16 autocast on GPUs that support it (float32 on CPU).")
    cpu_threads: int | None = Field(default=None, ge=1, description="torch threads on CPU (default: torch's).")

    def torch_device(self) -> torch.device:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("InferenceDevice: device 'cuda' was requested but torch sees no CUDA GPU")
        if self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        return torch.device("cuda")

    def uses_bf16(self, device: torch.device) -> bool:
        return self.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()

    def batch_size_on(self, device: torch.device) -> int:
        """The configured batch size, else the default for the device."""
        return self.batch_size or (GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE)

    def describe(self) -> str:
        device = self.torch_device()
        if device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(device)}{' bf16' if self.uses_bf16(device) else ''}"
        return f"cpu ({torch.get_num_threads()} threads)"

    def infer(
        self, model: torch.nn.Module, inputs: np.ndarray | Sequence, finish: Callable[[Outputs], Outputs] | None = None
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """Every input through ``model`` on this device, in batches (see ``batched_inference``)."""
        device = self.torch_device()
        if device.type == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        model = model.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return batched_inference(model, inputs, device, self.batch_size_on(device), self.uses_bf16(device), finish)
