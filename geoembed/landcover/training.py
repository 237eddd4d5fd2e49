"""Training the land-cover encoder on a product's samples, and measuring it on held-out regions.

Regions are split into training and held-out groups (whole coarse H3 groups, see ``split_regions``);
the model is trained self-supervised (crop-contrastive by default, or triplet) on training regions and
scored on held-out ones on every task of ``evaluate_features``, beside the same network untrained and
PCA of the class fractions.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
import xarray as xr
from sklearn.preprocessing import StandardScaler

from geoembed.core.evaluation import (
    EvaluationTable, HeldOutTargets, RegionSplit, evaluate_features, evaluation_problems, pca_features, split_regions,
)
from geoembed.core.grids.h3 import region_key
from geoembed.landcover import encoder
from geoembed.landcover.settings import ProductSettings
from geoembed.landcover.stencil import StencilState
from geoembed.landcover.stores import model_inputs, stacked_sources
from geoembed.landcover.windows import EMBEDDED


class NoSamplesError(LookupError):
    """No region of the product has materialized samples to train on."""


class TrainingHyperParameters(Protocol):
    """What training reads from its configuration (the model asset's run config)."""

    objective: str  # "contrastive" or "triplet"
    steps: int
    batch_size: int
    learning_rate: float
    temperature: float
    min_crop_share: float
    composition_weight: float
    margin: float
    positive_rings: int
    max_train_cells: int
    max_eval_cells: int
    held_out_fraction: float
    seed: int


@dataclass
class TrainingSamples:
    cells: np.ndarray
    regions: np.ndarray
    windows: np.ndarray  # model inputs (see stores.model_inputs)
    fractions: np.ndarray
    dominant: np.ndarray
    train_rows: np.ndarray
    eval_train: np.ndarray
    eval_test: np.ndarray
    held_out_cells: int = 0  # embeddable cells in held-out regions (0: eval_test are training cells)
    # Stacked products: per continuous source its mean and roughness (standard deviation) over the footprint,
    # and every source's summary statistics per cell (the raw-inputs baseline).
    continuous: dict[str, np.ndarray] = field(default_factory=dict)
    input_summary: np.ndarray | None = None
    sources: list[dict] = field(default_factory=list)  # stacked sources, as the samples describe them


def footprint_summaries(ds: xr.Dataset, keep: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Continuous targets ({source}_mean, {source}_roughness) and the raw inputs' summary statistics per cell
    (class fractions of every categorical source, mean and standard deviation of every continuous one)."""
    sources = stacked_sources(ds)
    if not sources:
        return {}, None
    targets: dict[str, np.ndarray] = {}
    columns = [ds["fractions"].values[keep]]
    for source in sources:
        name = source["name"]
        if source["kind"] == "categorical":
            columns.append(ds[f"fractions_{name}"].values[keep])
            continue
        values = ds[f"values_{name}"].values[keep].reshape(int(keep.sum()), -1)
        with warnings.catch_warnings():  # a window without valid pixels (status missing_<name>) is not kept
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, spread = np.nanmean(values, axis=1), np.nanstd(values, axis=1)
        targets[f"{name}_mean"], targets[f"{name}_roughness"] = mean, spread
        columns += [mean[:, None], spread[:, None]]
    return targets, np.concatenate(columns, axis=1).astype(np.float64)


def load_training_samples(
    open_samples: Callable[[str], xr.Dataset | None], product: str, state: StencilState, split: RegionSplit,
    config: TrainingHyperParameters,
) -> TrainingSamples:
    """Embeddable cells of every materialized region (``open_samples`` returns None for a region not
    materialized yet), with row subsets for training and evaluation."""
    parts: dict[str, list[np.ndarray]] = {"cells": [], "regions": [], "windows": [], "fractions": [], "dominant": []}
    summaries: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
    sources: list[dict] = []
    for key in state.regions:
        ds = open_samples(key)
        if ds is None:
            continue
        keep = np.isin(ds["status"].values, EMBEDDED)
        parts["cells"].append(ds["cell_ids"].values[keep])
        parts["regions"].append(np.full(int(keep.sum()), int(key, 16), dtype=np.uint64))
        parts["windows"].append(model_inputs(ds, keep))
        parts["fractions"].append(ds["fractions"].values[keep])
        parts["dominant"].append(ds["dominant_class"].values[keep])
        summaries.append(footprint_summaries(ds, keep))
        sources = stacked_sources(ds)
    if not parts["cells"]:
        raise NoSamplesError(f"no land-cover samples of product {product!r} are materialized; "
                             "materialize landcover_samples first")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    if sources:
        data["continuous"] = {k: np.concatenate([t[k] for t, _ in summaries]) for k in summaries[0][0]}
        data["input_summary"] = np.concatenate([summary for _, summary in summaries])
        data["sources"] = sources
    rng = np.random.default_rng(config.seed)
    in_train = np.isin(data["regions"], split.train)
    train_pool = np.nonzero(in_train)[0]
    test_pool = np.nonzero(~in_train)[0]
    held_out = len(test_pool)
    if held_out == 0:  # a single region: evaluate on training regions (reported as such)
        test_pool = train_pool

    def pick(pool: np.ndarray, n: int) -> np.ndarray:
        return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))

    return TrainingSamples(**data, train_rows=pick(train_pool, config.max_train_cells),
                           eval_train=pick(train_pool, config.max_eval_cells),
                           eval_test=pick(test_pool, config.max_eval_cells), held_out_cells=held_out)


def held_out_evaluation(data: TrainingSamples, model, untrained, dim: int) -> EvaluationTable:
    """Every evaluation task on held-out regions for the trained model, the same network untrained, and
    PCA of the class fractions at the same dimension (fit on the training rows)."""
    device = torch.device("cpu")
    tr, te = data.eval_train, data.eval_test
    targets = HeldOutTargets(data.dominant, data.fractions, data.continuous)
    train_targets, test_targets = targets.rows(tr), targets.rows(te)
    scores = {}
    for label, net in (("trained", model), ("untrained", untrained)):
        scores[label] = evaluate_features(encoder.embed(net, data.windows[tr], device, 4096, False), train_targets,
                                          encoder.embed(net, data.windows[te], device, 4096, False), test_targets)
    p_tr, p_te = pca_features(data.fractions[tr], data.fractions[te], dim)
    scores["pca_of_class_fractions"] = evaluate_features(p_tr, train_targets, p_te, test_targets)
    if data.input_summary is not None:  # stacked products: every source's summary statistics, standardised
        s_tr, s_te = standardised(data.input_summary[tr], data.input_summary[te])
        scores["input_summary_statistics"] = evaluate_features(s_tr, train_targets, s_te, test_targets)
    return EvaluationTable(scores)


def standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns scaled to zero mean and unit variance on the training rows (NaN -> 0)."""
    scaler = StandardScaler().fit(np.nan_to_num(train))
    return scaler.transform(np.nan_to_num(train)), scaler.transform(np.nan_to_num(test))


def quality_table(quality: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in quality.items())
    return "kNN (k=5) balanced accuracy of the dominant class on held-out regions\n\n| features | score |\n|---|---|\n" + rows


@dataclass
class TrainedEncoder:
    """A trained model with everything recorded about it."""

    model: encoder.LandCoverEncoder
    version: str
    evaluation: EvaluationTable
    losses: list[float]
    seconds: float
    hyper_parameters: dict
    metrics: dict  # what metrics.json and the checkpoint record
    split: RegionSplit
    train_cells: int
    problems: list[str]  # why the quality figures cannot be trusted (too few cells or regions)

    @property
    def quality(self) -> dict[str, float]:
        """The headline task's score per set of features (trained first)."""
        return self.evaluation.headline_scores()

    @property
    def beats_baselines(self) -> bool:
        """The trained model beats every baseline on the headline task."""
        return self.evaluation.beats_every_baseline()


def train_encoder(
    settings: ProductSettings,
    state: StencilState,
    open_samples: Callable[[str], xr.Dataset | None],
    config: TrainingHyperParameters,
    log: Callable[[str], None] = lambda _: None,
    warn: Callable[[str], None] | None = None,
) -> TrainedEncoder:
    """Train the triplet CNN on the product's materialized samples and measure it on held-out regions."""
    name = settings.name
    split = split_regions(state.region_ids(), config.held_out_fraction, config.seed)
    data = load_training_samples(open_samples, name, state, split, config)
    problems = evaluation_problems(len(data.train_rows), data.held_out_cells)
    for problem in problems:
        (warn or log)(f"{problem}; the quality figures of this model cannot be trusted")
    log(f"training on {len(data.train_rows):,} cells of {len(split.train)} regions; "
        f"{len(data.eval_test):,} held-out cells of {len(split.held_out)} regions")
    spec = encoder_spec(settings, state, data)
    untrained = encoder.build_encoder(spec, config.seed)
    model = encoder.build_encoder(spec, config.seed)

    def progress(step: int, loss: float) -> None:
        log(f"training ({config.objective}): step {step}/{config.steps}, loss {loss:.4f}")

    windows = data.windows[data.train_rows]
    if config.objective == "triplet":
        sampler = encoder.TripletSampler(data.cells[data.train_rows], data.regions[data.train_rows],
                                         config.positive_rings, config.seed)
        result = encoder.train_triplet(model, windows, sampler, config.steps, config.batch_size,
                                       config.learning_rate, config.margin, config.seed, progress)
    else:
        result = encoder.train_crop_contrastive(model, windows, config.steps, config.batch_size, config.learning_rate,
                                                config.temperature, config.min_crop_share, config.seed, progress,
                                                config.composition_weight)
    version = encoder.model_version(model)
    evaluation = held_out_evaluation(data, model, untrained, settings.embedding_dim)
    quality = evaluation.headline_scores()
    log(f"model {version}: held-out kNN balanced accuracy {quality}")
    hyper = {**_config_values(config), **json.loads(spec.to_json())}
    metrics = {
        "model_version": version, "product": name, "source_version": state.source_version,
        "hyper_parameters": hyper, "losses": result.losses, "training_seconds": result.seconds,
        "train_cells": int(len(data.train_rows)), "train_regions": len(split.train),
        "held_out_regions": [region_key(int(r)) for r in split.held_out], "quality_knn5_balanced_accuracy": quality,
        "held_out_evaluation": evaluation.scores,
        "macs_per_cell": encoder.flops_per_cell(spec), "torch": torch.__version__,
        "held_out_cells": data.held_out_cells, "evaluation_problems": problems,
    }
    return TrainedEncoder(model, version, evaluation, result.losses, result.seconds, hyper, metrics, split,
                          int(len(data.train_rows)), problems)


def encoder_spec(settings: ProductSettings, state: StencilState, data: TrainingSamples) -> encoder.EncoderSpec:
    """The network for the product's sources; continuous sources normalised by the training windows'
    median and interquartile range."""
    stacked_tokens = tuple(s["tokens"] for s in data.sources if s["kind"] == "categorical")
    centre: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    if any(s["kind"] == "continuous" for s in data.sources):
        first = 1 + len(stacked_tokens)
        centre, scale = encoder.robust_normalisation(data.windows[data.train_rows][:, first:])
    return encoder.EncoderSpec(n_tokens=len(state.legend) + 1, window_size=settings.window_size,
                               embedding_dim=settings.embedding_dim, stacked_tokens=stacked_tokens,
                               continuous_centre=centre, continuous_scale=scale)


def _config_values(config: TrainingHyperParameters) -> dict:
    dump = getattr(config, "model_dump", None)
    return dump() if dump else {k: getattr(config, k) for k in TrainingHyperParameters.__annotations__}
