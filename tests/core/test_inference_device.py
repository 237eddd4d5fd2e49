import numpy as np
import torch

from geoembed_resources import InferenceDevice
from geoembed_resources.compute import CPU_BATCH_SIZE, GPU_BATCH_SIZE


class RecordingModel(torch.nn.Module):
    """Doubles its input and records the length of every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return 2 * x.float()


def test_the_default_batch_size_depends_on_the_device_and_a_configured_one_wins():
    default = InferenceDevice(device="cpu")
    assert default.batch_size_on(torch.device("cpu")) == CPU_BATCH_SIZE
    assert default.batch_size_on(torch.device("cuda")) == GPU_BATCH_SIZE
    configured = InferenceDevice(device="cpu", batch_size=16)
    assert configured.batch_size_on(torch.device("cpu")) == configured.batch_size_on(torch.device("cuda")) == 16


def test_cpu_inference_runs_in_cpu_sized_batches_and_keeps_every_row():
    inputs = np.arange(600 * 3, dtype=np.float32).reshape(600, 3)
    model = RecordingModel()
    out = InferenceDevice(device="cpu").infer(model, inputs)
    assert model.batches == [256, 256, 88]
    np.testing.assert_array_equal(out, 2 * inputs)
