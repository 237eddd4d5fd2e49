"""Memory against partition size: the samples stage run on a batch of partitions 10x larger keeps its peak
memory (it holds at most one store's worth, ~100,000 cells, whatever the run covers).

    python -m benchmarks.memory [--regions 84] [--factor 10]

Each size runs in a fresh process (the default product's real MODIS raster; per region the windows, then
the run's samples written a store per ~100,000 cells as the samples asset does) and reports that process's
peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(regions: int, folder: str) -> None:
    import rasterio

    from benchmarks.suite import our_windows
    from geoembed.core.grids.h3 import cells_at
    from geoembed.landcover.categorical import describe_raster, resolve_legend
    from geoembed.landcover.settings import load_settings
    from geoembed.landcover.stores import ROWS_PER_COMMIT, samples_dataset, write_samples_batch
    from geoembed.landcover.windows import Legend

    settings = load_settings(REPO / "products" / "modis_global.yaml")
    info = describe_raster(settings.raster_location, settings.nodata)
    legend = Legend.from_mapping(resolve_legend(settings))
    keys = cells_at(settings.stencil_res)[:regions]  # res-1 regions of 343 cells (the stencil's)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start, cells, pending = time.perf_counter(), 0, {}
    with rasterio.open(info.location) as src:
        for region in keys:
            samples = our_windows(src, info, legend, [region], settings)[0]
            pending[f"{int(region):x}"] = samples_dataset(samples, legend, settings.resolution,
                                                          {"source_version": "0" * 16})
            cells += len(samples.cells)
            if sum(ds.sizes["cells"] for ds in pending.values()) >= ROWS_PER_COMMIT:
                write_samples_batch(folder, pending)
                pending = {}
    if pending:
        write_samples_batch(folder, pending)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"regions": len(keys), "cells": cells, "seconds": round(time.perf_counter() - start, 2),
                      "peak_mb": round(peak, 1), "peak_after_imports_mb": round(baseline, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=84)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--child", nargs=2, metavar=("REGIONS", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return
    from benchmarks import write_results

    rows = []
    for regions in (args.regions, args.regions * args.factor):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", str(regions), tmp],
                                 cwd=REPO, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"samples stage, {r['regions']:>4} regions, {r['cells']:>8,} cells: peak {r['peak_mb']:.0f} MB "
              f"({r['peak_after_imports_mb']:.0f} MB after imports), {r['seconds']:.1f} s")
    small, large = rows
    print(f"{large['cells'] / small['cells']:.1f}x the cells: peak memory x{large['peak_mb'] / small['peak_mb']:.2f}, "
          f"above the imports x{(large['peak_mb'] - large['peak_after_imports_mb']) / max(small['peak_mb'] - small['peak_after_imports_mb'], 1e-9):.2f}")
    write_results("memory", {"samples": rows})


if __name__ == "__main__":
    main()
