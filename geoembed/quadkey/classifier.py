"""IMAGESIM's multilabel classifier, made runnable here: a frozen backbone (our self-supervised ChipNet, or
Clay's encoder from a local checkpoint: anything with ``pooled(reflectance)``, ``pooled_dim`` and
``last_block()``) with a trainable head (hidden layers with batch norm, ReLU and dropout), trained with BCE-with-logits;
accuracy and F2 (torchmetrics) per epoch on a spatially separate validation split. The layer before the
logits is the chip's feature vector (what retrieval compares); both the feature extractor and the
classifier export to ONNX (torch's dynamo exporter, dynamic batch) and are checked with onnxruntime.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MultilabelAccuracy, MultilabelFBetaScore

from geoembed.core.checkpoints import checkpoint_bytes, read_checkpoint
from geoembed.core.errors import InputError
from geoembed.core.lineage import weights_version
from geoembed.core.self_supervised import random_dihedral
from geoembed.imagery.encoders.chipnet import ChipNet, ChipNetSpec
from geoembed.imagery.encoders import load_chipnet
from geoembed.imagery.encoders.clay import ClayBackboneSpec, ClayChipBackbone, load_clay_encoder

Backbone = ChipNet | ClayChipBackbone


MAX_POSITIVE_WEIGHT = 20.0


@dataclass(frozen=True)
class HeadSpec:
    """The trainable head: hidden layer widths, dropout, classes."""

    classes: tuple[str, ...]
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.2
    unfreeze_last_block: bool = False

    def to_json(self) -> dict:
        return {**asdict(self), "classes": list(self.classes), "hidden": list(self.hidden)}


class ChipClassifier(nn.Module):
    """``forward(reflectance)`` -> logits (B, classes); ``features(reflectance)`` -> the layer before them."""

    def __init__(self, backbone: Backbone, head: HeadSpec):
        super().__init__()
        self.backbone, self.head_spec = backbone, head
        layers: list[nn.Module] = []
        width = backbone.pooled_dim
        for hidden in head.hidden:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(head.dropout)]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.logits = nn.Linear(width, len(head.classes))
        self.freeze_backbone()

    def freeze_backbone(self) -> None:
        """Only the head trains (and, when configured, the backbone's last block)."""
        for p in self.backbone.parameters():
            p.requires_grad = False
        if self.head_spec.unfreeze_last_block:
            for p in self.backbone.last_block().parameters():
                p.requires_grad = True

    def train(self, mode: bool = True) -> ChipClassifier:
        super().train(mode)
        if not self.head_spec.unfreeze_last_block:
            self.backbone.eval()  # a frozen backbone keeps its batch-norm statistics
        return self

    def features(self, reflectance: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.backbone.pooled(reflectance))

    def forward(self, reflectance: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(reflectance))


class FeatureExtractor(nn.Module):
    """The classifier up to the layer before its logits (what the ONNX feature extractor holds)."""

    def __init__(self, classifier: ChipClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, reflectance: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(reflectance)


def backbone_from_spec(spec: dict) -> Backbone:
    """A backbone of the architecture a spec describes (``spec.to_json()`` of ChipNet or Clay), untrained."""
    spec = dict(spec)
    if spec.pop("kind", "geoembed") == "clay":
        return ClayChipBackbone.untrained(ClayBackboneSpec(spec["size"], tuple(spec["bands"]),
                                                           tuple(spec["input_bands"])))
    return ChipNet(ChipNetSpec(**{**spec, "bands": tuple(spec["bands"])}))


def load_backbone(pointer: dict, input_bands: list[str], chipnet_checkpoint: Callable[[], bytes]) -> Backbone:
    """The backbone a ``chip_backbone`` pointer names: Clay from its checkpoint (refused if the file changed
    since: its SHA-256 is recorded), or our ChipNet from the bytes ``chipnet_checkpoint`` reads."""
    if pointer.get("kind") == "clay":
        encoder, _ = load_clay_encoder(pointer["checkpoint"], pointer["size"], pointer["bands"],
                                       pointer["checkpoint_sha256"])
        return ClayChipBackbone(encoder, ClayBackboneSpec(pointer["size"], tuple(pointer["bands"]), tuple(input_bands)))
    return load_chipnet(chipnet_checkpoint())[0]


def pooled_features(backbone: Backbone, reflectance: np.ndarray, batch: int = 256) -> np.ndarray:
    """The backbone's own pooled features of every chip (no head), a batch at a time."""
    backbone.eval()
    with torch.inference_mode():
        return np.concatenate([backbone.pooled(torch.from_numpy(reflectance[i:i + batch].astype(np.float32))).numpy()
                               for i in range(0, len(reflectance), batch)]) if len(reflectance) else \
            np.zeros((0, backbone.pooled_dim), np.float32)


def untrained_like(backbone: Backbone, seed: int = 0) -> Backbone:
    """The same architecture with fresh random weights (the retrieval baseline), keeping the input
    normalisation, which is not learned."""
    torch.manual_seed(seed)
    fresh = backbone_from_spec(backbone.spec.to_json())
    if isinstance(backbone, ChipNet):
        fresh.set_normalisation(backbone.band_mean, backbone.band_std)
    return fresh.eval()


@dataclass
class LabelledSamples:
    """Reflectance (n, bands, S, S), multilabel targets (n, classes) and the spatial group of each sample
    (validation holds out whole groups)."""

    reflectance: np.ndarray
    targets: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def split_by_group(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the samples of the held-out groups: about ``fraction`` of the groups, at least one, never all."""
    names = np.unique(groups)
    if len(names) < 2:
        raise InputError(f"{len(names)} spatial group(s) of labelled chips: at least two are needed for a "
                         "spatially separate validation split")
    rng = np.random.default_rng(seed)
    k = min(len(names) - 1, max(1, round(fraction * len(names))))
    return np.isin(groups, rng.choice(names, size=k, replace=False))


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    validation_loss: float
    validation_accuracy: float
    validation_f2: float


@dataclass
class TrainedClassifier:
    model: ChipClassifier
    version: str
    epochs: list[EpochMetrics]
    best_epoch: int
    seconds: float
    train_samples: int
    validation_samples: int
    untrained: dict[str, float] = field(default_factory=dict)  # the same network with a random head
    validation_groups: list = field(default_factory=list)  # the spatial groups held out

    @property
    def best(self) -> EpochMetrics:
        return self.epochs[self.best_epoch]


def evaluate(model: ChipClassifier, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> tuple[float, float, float]:
    """BCE loss, accuracy and F2 (macro over classes, threshold 0.5) of ``model`` on (x, y)."""
    model.eval()
    n_classes = y.shape[1]
    accuracy = MultilabelAccuracy(num_labels=n_classes, average="macro")
    f2 = MultilabelFBetaScore(beta=2.0, num_labels=n_classes, average="macro", zero_division=0)
    losses = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            logits = model(x[start:start + batch])
            target = y[start:start + batch]
            losses.append(F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum").item())
            accuracy.update(logits.sigmoid(), target.int())
            f2.update(logits.sigmoid(), target.int())
    return sum(losses) / max(1, y.numel()), float(accuracy.compute()), float(f2.compute())


def train_classifier(backbone: Backbone, samples: LabelledSamples, head: HeadSpec, epochs: int = 30,
                     batch_size: int = 32, learning_rate: float = 1e-3, held_out_fraction: float = 0.2,
                     seed: int = 0, log=lambda _: None) -> TrainedClassifier:
    """Train the head on the training groups; after every epoch, score the validation groups; keep the
    epoch with the best validation F2."""
    held = split_by_group(samples.groups, held_out_fraction, seed)
    x = torch.from_numpy(samples.reflectance.astype(np.float32))
    y = torch.from_numpy(samples.targets.astype(np.float32))
    train_x, train_y, val_x, val_y = x[~held], y[~held], x[held], y[held]
    if len(train_x) < 2:
        raise InputError(f"{len(train_x)} labelled training sample(s): at least two are needed to train the classifier")
    torch.manual_seed(seed)
    model = ChipClassifier(backbone, head)
    untrained = dict(zip(("loss", "accuracy", "f2"), evaluate(model, val_x, val_y)))
    # Rare classes weigh as much as common ones (F2 rewards finding them): positives weighted by the
    # negatives-to-positives ratio of the training samples, at most MAX_POSITIVE_WEIGHT.
    positives = train_y.sum(dim=0)
    pos_weight = ((len(train_y) - positives) / positives.clamp(min=1)).clamp(1.0, MAX_POSITIVE_WEIGHT)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history: list[EpochMetrics] = []
    best_state, best = None, -1
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            if len(rows) < 2:  # batch norm needs two samples
                continue
            batch = random_dihedral(train_x[rows], generator, dims=(-2, -1))  # overhead views have no up or left
            loss = F.binary_cross_entropy_with_logits(model(batch), train_y[rows], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
        val_loss, val_accuracy, val_f2 = evaluate(model, val_x, val_y)
        history.append(EpochMetrics(epoch, total / len(train_x), val_loss, val_accuracy, val_f2))
        log(f"epoch {epoch + 1}/{epochs}: train loss {history[-1].train_loss:.4f}, validation loss {val_loss:.4f}, "
            f"accuracy {val_accuracy:.3f}, F2 {val_f2:.3f}")
        if best < 0 or val_f2 > history[best].validation_f2:
            best, best_state = epoch, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    version = weights_version({"backbone": backbone.spec.to_json(), "head": head.to_json()}, model.state_dict())
    return TrainedClassifier(model, version, history, best, time.perf_counter() - start, int((~held).sum()),
                             int(held.sum()), untrained, sorted(np.unique(samples.groups[held]).tolist()))


# ---------------------------------------------------------------------------------------------
# Saving, ONNX
# ---------------------------------------------------------------------------------------------


def save_classifier(model: ChipClassifier, extra: dict) -> bytes:
    return checkpoint_bytes(model, {"backbone": model.backbone.spec.to_json(), "head": model.head_spec.to_json()},
                            extra)


def load_classifier(data: bytes) -> tuple[ChipClassifier, dict]:
    payload = read_checkpoint(data, weights_only=False)
    backbone = backbone_from_spec(payload.pop("backbone"))
    head = payload.pop("head")
    model = ChipClassifier(backbone, HeadSpec(**{**head, "classes": tuple(head["classes"]),
                                                   "hidden": tuple(head["hidden"])}))
    model.load_state_dict(payload.pop("state_dict"))
    return model.eval(), payload


class OnnxMismatchError(InputError):
    """An ONNX file that does not give the outputs of the model it claims to be."""


def export_onnx(module: nn.Module, bands: int, size: int) -> bytes:
    """``module`` (reflectance (B, bands, H, W) -> one tensor) as ONNX with a dynamic batch size and chip
    size (the head pools the feature map: sub-tiles and whole chips go through the same file)."""
    # The exporter warns that torchvision's operators are not registered (we use none of them).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    module = module.eval()
    example = torch.zeros((2, bands, size, size))
    dims = {0: torch.export.Dim("batch", min=1, max=65536), 2: torch.export.Dim("height", min=16, max=4096),
            3: torch.export.Dim("width", min=16, max=4096)}
    program = torch.onnx.export(module, (example,), dynamo=True, input_names=["reflectance"],
                                dynamic_shapes=(dims,), verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    return buffer.getvalue()


def onnx_session(data: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run_onnx(session, reflectance: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: np.nan_to_num(reflectance).astype(np.float32)})[0]


def check_onnx(data: bytes, module: nn.Module, reflectance: np.ndarray, tolerance: float = 1e-4,
               what: str = "ONNX model") -> float:
    """The largest absolute difference between the ONNX file's outputs and ``module``'s on ``reflectance``;
    above ``tolerance`` the file is not the model it claims to be (OnnxMismatchError)."""
    session = onnx_session(data)
    expected_bands = session.get_inputs()[0].shape[1]
    if expected_bands != reflectance.shape[1]:
        raise OnnxMismatchError(f"{what} takes {expected_bands} bands; the model takes {reflectance.shape[1]}")
    with torch.inference_mode():
        reference = module.eval()(torch.from_numpy(np.nan_to_num(reflectance).astype(np.float32))).numpy()
    found = run_onnx(session, reflectance)
    if found.shape != reference.shape:
        raise OnnxMismatchError(f"{what} gives outputs of shape {found.shape}; the model gives {reference.shape}")
    gap = float(np.abs(found - reference).max())
    if gap > tolerance:
        raise OnnxMismatchError(f"{what} differs from the model by up to {gap:.3g} (tolerance {tolerance:g})")
    return gap
