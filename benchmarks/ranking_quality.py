"""Ranking quality over seeds: per station, Kendall tau between score and the observed series on the
validation, in-range test and out-of-range test images, for the trained model, the same network untrained and
mean image brightness (each seed changes the train/validation split and the initial weights).

    geoembed stations-from-scenes --out data/fpe_stations      # the development stations, once
    python -m benchmarks.ranking_quality [--product products/fpe_s2_stations.yaml] [--seeds 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks import write_results
from geoembed.products import load_product
from geoembed.ranking.dataset import build_dataset
from geoembed.ranking.model import load_images, mean_brightness, new_ranker, score, train_ranker
from geoembed.ranking.report import tau
from geoembed.ranking.stations import read_station, station_folder, station_keys

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("validation", "test_in", "test_out")
RANKERS = ("model", "untrained", "brightness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", default=str(REPO / "products" / "fpe_s2_stations.yaml"))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    settings = load_product(args.product)
    results = {}
    print(f"{'station':<12}" + "".join(f"{s + ' ' + r:>26}" for s in SPLITS for r in RANKERS))
    for key in station_keys(settings.stations):
        data = read_station(settings.stations, key, settings.variable, settings.annotations_variable,
                            settings.max_gap_minutes)
        rows = []
        for seed in range(args.seeds):
            config = settings.training.model_copy(update={"seed": seed})
            ds = build_dataset(data, settings.filters, config.train_share, seed)
            images = load_images(list(ds.images["path"]), config.image_size, key,
                                 station_folder(settings.stations, key))
            index = ds.image_index()
            trained = train_ranker(images, ds.pairs["left_id"].map(index).to_numpy(),
                                   ds.pairs["right_id"].map(index).to_numpy(), ds.pairs["label"].to_numpy(np.int64),
                                   (ds.pairs["split"] == "train").to_numpy(), config)
            scores = {"model": score(trained.model, images),
                      "untrained": score(new_ranker(trained.model.spec, seed, images), images),
                      "brightness": mean_brightness(images)}
            day, value = ds.images["daytime"].to_numpy(), ds.images["value"].to_numpy(float)
            rows.append([tau(scores[r][keep], value[keep])[0] for s in SPLITS
                         for keep in [day & (ds.images["split"] == s).to_numpy()] for r in RANKERS])
        values = np.array(rows, dtype=float)
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        results[key] = {f"{s}:{r}": {"mean": float(m), "std": float(d)}
                        for (s, r), m, d in zip([(s, r) for s in SPLITS for r in RANKERS], mean, std)}
        print(f"{key:<12}" + "".join(f"{f'{m:.3f} ± {d:.3f}':>26}" for m, d in zip(mean, std)))
    write_results("ranking_quality", {"product": settings.name, "seeds": args.seeds, "stations": results})


if __name__ == "__main__":
    main()
