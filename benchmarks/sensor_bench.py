"""Landing sensor evaluation time with 10,000 files in the landing location.

    python -m benchmarks.sensor_bench [--files 10000]

Writes N small GeoTIFFs (64 x 64 px windows of the real WorldCover 2020 tile when ../shared/data is
there, else generated) into a temporary landing directory and evaluates the real sensor (real
instance, real resources) through Dagster's sensor context:

  first    every file is new (each is read once to get its content version)
  steady   nothing changed (the common tick)
  one_new  one file landed among N
  touched  100 files touched without a content change

Baseline, measured in the same run: a sensor without the fingerprint cursor, which must hash every
file on every tick to notice content changes. Dagster's sensor timeout is 60 s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import rasterio
import yaml
from rasterio.transform import from_origin

from geoembed.landcover.settings import load_settings
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.landcover.sensors import landing_sensor_name

REPO = Path(__file__).resolve().parent.parent
TILE = REPO.parent / "shared" / "data" / "landcover" / "ESA_WorldCover_10m_2020_v100_N00E006_Map.tif"
SIZE = 64


def write_files(folder: Path, n: int) -> str:
    side = int(np.ceil(np.sqrt(n)))
    if TILE.exists():
        with rasterio.open(TILE) as src:
            # A land area near São Tomé, read once; each file is one 64 x 64 window of it.
            row0, col0 = src.index(6.45, 0.45)
            block = src.read(1, window=rasterio.windows.Window(col0, row0, side * SIZE, side * SIZE))
            transform, origin = src.transform, "real WorldCover 2020 windows"
    else:
        block = np.random.default_rng(0).integers(1, 10, (side * SIZE, side * SIZE), dtype=np.uint8)
        transform, origin = from_origin(6.45, 0.45, 1 / 12000, 1 / 12000), "generated"
    for i in range(n):
        r, c = divmod(i, side)
        data = block[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE]
        west = transform.c + (c * SIZE) * transform.a
        north = transform.f + (r * SIZE) * transform.e
        with rasterio.open(folder / f"tile_{i:05d}.tif", "w", driver="GTiff", width=SIZE, height=SIZE, count=1,
                           dtype="uint8", crs="EPSG:4326", nodata=0,
                           transform=from_origin(west, north, transform.a, -transform.e)) as dst:
            dst.write(data, 1)
    return origin


def naive_tick(folder: Path) -> None:
    """What a cursor of names alone cannot avoid: hash every file to notice content changes."""
    for path in sorted(folder.glob("*.tif")):
        hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        landing, data = tmp / "landing", tmp / "data"
        landing.mkdir()
        started = time.perf_counter()
        origin = write_files(landing, args.files)
        print(f"[sensor_bench] {args.files:,} files ({origin}) written in {time.perf_counter() - started:.1f} s, "
              f"{sum(p.stat().st_size for p in landing.iterdir()) / 1e6:.1f} MB")
        product = tmp / "bench.yaml"
        product.write_text(yaml.safe_dump({"name": "sensor_bench", "landing": str(landing), "legend": "tag:legend",
                                           "resolution": 8, "region_resolution": 5}))
        settings = load_settings(product)
        resources = local_resources(data)
        defs = build_definitions([settings], resources)
        sensor = defs.get_sensor_def(landing_sensor_name(settings.name))

        with dg.instance_for_test() as instance:
            cursor = None

            def tick() -> float:
                nonlocal cursor
                with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
                    start = time.perf_counter()
                    result = sensor(context)
                    elapsed = time.perf_counter() - start
                cursor = result.cursor
                return elapsed

            first = tick()
            steady = [tick() for _ in range(args.repeat)]
            one_new = []
            for i in range(args.repeat):
                src = landing / "tile_00000.tif"
                (landing / f"new_{i}.tif").write_bytes(src.read_bytes())
                one_new.append(tick())
            for path in sorted(landing.glob("tile_000*.tif"))[:100]:
                os.utime(path, ns=(time.time_ns(), time.time_ns()))
            touched = tick()
            naive = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                naive_tick(landing)
                naive.append(time.perf_counter() - start)
            cursor_bytes = len(cursor or "")

    p50 = statistics.median
    print(f"\nlanding sensor evaluation, {args.files:,} files (2 cores; Dagster's sensor timeout: 60 s)")
    print(f"{'case':<44}{'seconds':>10}{'of 60 s':>10}")
    rows = [("first tick: every file new (read once)", first),
            (f"steady: nothing changed (p50 of {args.repeat})", p50(steady)),
            (f"one file landed (p50 of {args.repeat})", p50(one_new)),
            ("100 files touched, same content", touched),
            (f"baseline: hash every file each tick (p50 of {args.repeat})", p50(naive))]
    for label, seconds in rows:
        print(f"{label:<44}{seconds:>10.3f}{seconds / 60:>9.1%}")
    print(f"steady tick vs baseline: {p50(naive) / p50(steady):.1f}x faster; cursor {cursor_bytes / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
