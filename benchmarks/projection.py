"""The global product on paper: wall time and cost at H3 res 7 (100 m land cover) and res 8 (10 m), on one
GPU box and on N Kubernetes workers, projected from the per-stage rates the suite measured here.

    python -m benchmarks.suite                  # measure first (writes bench-results/suite.json)
    python -m benchmarks.projection [--workers 64] [--gpu-utilisation 0.25] ...

How it scales the measured rates (2 CPU cores, the default product: H3 res 4, 16 px MODIS windows):

* cells: every cell of the resolution times the share of the globe the default product embeds (its land
  and coastal cells, counted from its stencil: 164,698 of 288,122 at res 4);
* window: the same ground context as the default product (16 x 0.05 deg, 3.4 cell edges), in pixels of the
  new source: S = 3.4 x edge / pixel, so a res-7 cell at 100 m reads 48 x 48 px, a res-8 cell at 10 m 182 x 182;
* windows and CPU inference cost per window pixel as measured (both are linear in S^2), and scale with
  cores; GPU inference at the measured FLOPs per pixel and an assumed share of the GPU's bf16 peak
  (no GPU was lent to measure it);
* database load at the measured rows/s of one PostgreSQL server (it does not scale with workers);
* stages overlap (the runs of a backfill stream partitions through every stage), so the wall time is the
  slowest stage's, plus the measured orchestration share. Prices are on-demand list prices (parameters).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h3

from benchmarks import RESULTS, write_results

DEFAULT_CELLS, DEFAULT_TOTAL = 164_698, 288_122  # the default product's embedded cells, res 4
DEFAULT_WINDOW_PX, DEFAULT_PIXEL_KM = 16, 0.05 * 111.32
CONTEXT_EDGES = DEFAULT_WINDOW_PX * DEFAULT_PIXEL_KM / h3.average_hexagon_edge_length(4, "km")
SCENARIOS = (("res 7, 100 m land cover", 7, 0.1), ("res 8, 10 m land cover", 8, 0.01))


def project(suite: dict, args: argparse.Namespace) -> list[dict]:
    measured_px = DEFAULT_WINDOW_PX ** 2
    windows_px_per_core = suite["windows"]["ours_per_s"] * measured_px / args.measured_cores
    infer_px_per_core = suite["inference"]["ours_per_s"] * measured_px / args.measured_cores
    flops_per_px = suite["inference"]["flops_per_cell"]["ours"] / measured_px
    db_rows_per_s = suite["database"]["ours_per_s"]
    gpu_px_per_s = args.gpu_peak_tflops * 1e12 * args.gpu_utilisation / flops_per_px
    rows = []
    for label, res, pixel_km in SCENARIOS:
        cells = h3.get_num_cells(res) * DEFAULT_CELLS / DEFAULT_TOTAL
        side = round(CONTEXT_EDGES * h3.average_hexagon_edge_length(res, "km") / pixel_km)
        px = cells * side ** 2
        gpu_box = {"windows (CPU)": px / (windows_px_per_core * args.box_cores),
                   "inference (GPU)": px / gpu_px_per_s, "database load": cells / db_rows_per_s}
        cpu_seconds_per_px = 1 / windows_px_per_core + 1 / infer_px_per_core
        cluster = {"windows + inference (CPU)": px * cpu_seconds_per_px / (args.workers * args.worker_cores),
                   "database load": cells / db_rows_per_s}
        for name, stages, price in (("one GPU box", gpu_box, args.box_price),
                                    (f"{args.workers} workers x {args.worker_cores} cores", cluster,
                                     args.workers * args.worker_price)):
            limit = max(stages, key=stages.get)
            wall = stages[limit] / (1 - args.orchestration_share)
            rows.append({"product": label, "cells": cells, "window_px": side, "deployment": name,
                         "stages_hours": {k: v / 3600 for k, v in stages.items()}, "limited_by": limit,
                         "wall_hours": wall / 3600, "cost_usd": wall / 3600 * (price + args.database_price)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=RESULTS / "suite.json")
    parser.add_argument("--measured-cores", type=int, default=2, help="cores the suite ran on")
    parser.add_argument("--box-cores", type=int, default=26, help="CPU cores of the GPU box (an H100 node's share)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM)")
    parser.add_argument("--gpu-utilisation", type=float, default=0.25, help="assumed share of that peak")
    parser.add_argument("--box-price", type=float, default=6.9, help="USD/h of the GPU box (one H100)")
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--worker-cores", type=int, default=16)
    parser.add_argument("--worker-price", type=float, default=0.68, help="USD/h of one 16-core worker")
    parser.add_argument("--database-price", type=float, default=1.0, help="USD/h of the PostgreSQL server")
    parser.add_argument("--orchestration-share", type=float, default=0.10, help="wall time outside compute")
    args = parser.parse_args()
    suite = json.loads(args.suite.read_text())
    missing = [s for s in ("windows", "inference", "database") if s not in suite]
    if missing:
        raise SystemExit(f"projection: {args.suite} lacks the stages {missing}; run `python -m benchmarks.suite` first")
    rows = project(suite, args)
    print(f"measured on {args.measured_cores} cores: windows {suite['windows']['ours_per_s']:,.0f} cells/s, "
          f"inference {suite['inference']['ours_per_s']:,.0f} cells/s "
          f"({suite['inference']['flops_per_cell']['ours'] / 1e6:.2f} MFLOP/cell), database "
          f"{suite['database']['ours_per_s']:,.0f} rows/s; GPU assumed at {args.gpu_utilisation:.0%} of "
          f"{args.gpu_peak_tflops:.0f} TFLOP/s")
    print(f"{'product':26s} {'cells':>14s} {'window':>7s} {'deployment':24s} {'wall h':>8s} {'cost USD':>9s}  limited by")
    for r in rows:
        print(f"{r['product']:26s} {r['cells']:>14,.0f} {r['window_px']:>5d}px {r['deployment']:24s} "
              f"{r['wall_hours']:>8.1f} {r['cost_usd']:>9,.0f}  {r['limited_by']} "
              f"({', '.join(f'{k} {v:.1f} h' for k, v in r['stages_hours'].items())})")
    write_results("projection", {"assumptions": vars(args) | {"suite": str(args.suite)}, "rows": rows})


if __name__ == "__main__":
    main()
