"""Held-out quality of the land-cover model against its baselines, over several seeds, per product.

    python -m benchmarks.model_quality --product modis_global [--seeds 0 1 2] [--objective contrastive triplet]
        [--composition-weight 0 1]

Reads the product's materialized samples under $GEOEMBED_DATA_DIR (materialize the product first, e.g.
`geoembed run`), trains the model as the `embedding_model` asset does (``train_encoder``, the asset's
default hyper-parameters) once per seed and objective, and prints every task of the held-out evaluation
for the trained model and its baselines (untrained network, PCA of the class fractions, and for stacked
products the raw inputs' summary statistics), then the mean
and standard deviation over the seeds, the headline margin over the best baseline, training seconds and
inference cells/s. Each ``--composition-weight`` (contrastive only) is a separate setting of the same run,
measured on the same splits as the others. A seed changes both the held-out regions and the initialisation,
so the spread is that of a whole training run. Writes the figures as JSON to bench-results/model_quality_<product>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import write_results
from geoembed.landcover import encoder
from geoembed.landcover.settings import load_settings
from geoembed.landcover.stores import model_inputs
from geoembed.landcover.training import train_encoder
from geoembed_assets.landcover.assets import TrainingConfig
from geoembed_resources import InferenceDevice, ProductStorage

REPO = Path(__file__).resolve().parents[1]


def inference_cells_per_second(model: encoder.LandCoverEncoder, windows: np.ndarray) -> float:
    """Cells/s of the embedding call the cell_embeddings asset makes on the CPU, median of 3."""
    device = InferenceDevice(device="cpu")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        device.infer(model, windows, finish=encoder.renormalise)
        times.append(time.perf_counter() - start)
    return len(windows) / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", default="modis_global")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objective", nargs="+", default=["contrastive", "triplet"],
                        choices=["contrastive", "triplet"])
    parser.add_argument("--composition-weight", type=float, nargs="+", default=[TrainingConfig().composition_weight],
                        help="weights of the composition loss to compare (contrastive)")
    args = parser.parse_args()
    settings = load_settings(REPO / "products" / f"{args.product}.yaml")
    storage = ProductStorage(root=os.environ.get("GEOEMBED_DATA_DIR", str(REPO / "data")))
    state = storage.read_stencil(settings.name)

    def open_samples(key: str):
        return storage.open_samples(settings.name, key) if storage.has_samples(settings.name, key) else None

    # Inference speed is timed on 20,000 windows of the first materialized region (repeated if it has fewer).
    first = next(ds for ds in map(open_samples, state.regions) if ds is not None)
    inputs = model_inputs(first)
    windows = np.resize(inputs, (20_000, *inputs.shape[1:]))
    results: dict[str, list[dict]] = {}
    settings_to_run = [(o, w) for o in args.objective for w in (args.composition_weight if o == "contrastive" else [0.0])]
    for objective, weight in settings_to_run:
        label = f"{objective}, composition weight {weight:g}" if objective == "contrastive" else objective
        for seed in args.seeds:
            config = TrainingConfig(objective=objective, seed=seed, composition_weight=weight)
            trained = train_encoder(settings, state, open_samples, config)
            row = {"seed": seed, "scores": trained.evaluation.scores, "margin": trained.evaluation.margin(),
                   "training_seconds": round(trained.seconds, 1),
                   "inference_cells_per_s": round(inference_cells_per_second(trained.model, windows))}
            results.setdefault(label, []).append(row)
            print(f"{label} seed {seed}: {json.dumps(row)}", flush=True)

    print(f"\n{args.product}: held-out evaluation, mean ± std over seeds {args.seeds}\n")
    for objective, rows in results.items():
        tasks = list(rows[0]["scores"]["trained"])
        print(f"{objective}; training {np.mean([r['training_seconds'] for r in rows]):.1f} s, "
              f"inference {np.mean([r['inference_cells_per_s'] for r in rows]):,.0f} cells/s (CPU)")
        print("| features | " + " | ".join(tasks) + " |")
        print("|---|" + "---|" * len(tasks))
        for features in rows[0]["scores"]:
            cells = [f"{np.mean(v):.3f} ± {np.std(v):.3f}"
                     for v in ([r["scores"][features][t] for r in rows] for t in tasks)]
            print(f"| {features} | " + " | ".join(cells) + " |")
        margins = [r["margin"] for r in rows]
        print(f"headline margin over the best baseline: {np.mean(margins):+.3f} ± {np.std(margins):.3f} "
              f"(per seed {margins})\n")
    write_results(f"model_quality_{args.product}", results)


if __name__ == "__main__":
    main()
