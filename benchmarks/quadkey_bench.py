"""Quadkey chips: chipping and feature extraction speed, each beside a baseline measured in the same run.

    python -m benchmarks.quadkey_bench --product s2_33uuu_quadkeys [--repeat 3]

Reads a materialized quadkey product under $GEOEMBED_DATA_DIR (run `geoembed run --product
products/s2_33uuu_quadkeys.yaml` first) and measures, on the same scenes and chips:

* chipping: every partition cut again (``chip_partition``: reprojection into the web-mercator tiles, the
  datacube, thumbnails and no-data index written to a scratch folder), against reading the same bands'
  pixels with rasterio into memory (the decode alone);
* features (CPU): the classifier's feature extractor on whole chips (the product's chip size) through torch and through
  its ONNX file with onnxruntime, in batches of 32.

Writes bench-results/quadkey_<product>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from benchmarks import write_results
from geoembed.core.sinks.zarr import open_store
from geoembed.imagery.catalog import SceneCatalog
from geoembed.products import load_product
from geoembed.quadkey.classifier import FeatureExtractor, load_classifier, onnx_session, run_onnx
from geoembed.quadkey.layout import QuadkeyLayout
from geoembed.quadkey.partition import chip_partition
from geoembed.quadkey.plan import QuadkeyPlan, scene_key
from geoembed.quadkey.samples import chips_with_data, datacubes_of
from geoembed_resources import ProductStorage

REPO = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--product", default="s2_33uuu_quadkeys")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = load_product(REPO / "products" / f"{args.product}.yaml")
    storage = ProductStorage(root=os.environ.get("GEOEMBED_DATA_DIR", str(REPO / "data")))
    layout = QuadkeyLayout(storage.outputs_dir(settings.name), storage.product_dir(settings.name))
    catalog = SceneCatalog.model_validate(storage.read_json(layout.catalog, "scene catalog"))
    plan = QuadkeyPlan.model_validate(storage.read_json(layout.plan, "quadkey plan"))
    scenes = {scene_key(s): s for s in catalog.scenes}
    chips = sum(plan.chips.values())

    def chip_everything() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for key in plan.partitions:
                chip_partition(key, plan, scenes, settings.bands, rasterio.open,
                               lambda scene, key=key: Path(tmp) / key / f"{scene.replace('|', '_')}.zarr",
                               lambda scene, quadkey, png: "", {})

    def read_bands() -> None:
        for scene in scenes.values():
            for band in settings.bands:
                with rasterio.open(scene.bands[band]) as src:
                    src.read(1)

    ours = median_seconds(chip_everything, args.repeat)
    decode = median_seconds(read_bands, args.repeat)
    results = {"product": settings.name, "chips": chips, "chipping": {
        "chips_per_second": chips / ours, "decode_only_chips_per_second": chips / decode, "ratio": decode / ours}}
    print(f"{settings.name}: {chips} chips at zoom {plan.zoom}, {len(plan.partitions)} partitions; median of {args.repeat}")
    print(f"  chipping: {chips / ours:8.1f} chips/s; reading the bands with rasterio alone: {chips / decode:8.1f} "
          f"chips/s (ours {decode / ours:.2f} of it)")

    current = storage.read_json(layout.current_classifier, "the chip classifier")
    folder = Path(current["folder"])
    model, _ = load_classifier((folder / "classifier.pt").read_bytes())
    extractor = FeatureExtractor(model).eval()
    found = [chips_with_data(open_store(path, "datacube"), settings.bands)[0]
             for _, _, path in datacubes_of(plan.partitions, layout.partition_datacube, lambda p: p.exists())]
    reflectance = np.nan_to_num(np.concatenate(found))
    batch = np.resize(reflectance, (256, *reflectance.shape[1:])).astype(np.float32)
    session = onnx_session((folder / "features.onnx").read_bytes())

    def torch_features() -> None:
        with torch.inference_mode():
            for i in range(0, len(batch), 32):
                extractor(torch.from_numpy(batch[i:i + 32]))

    def onnx_features() -> None:
        for i in range(0, len(batch), 32):
            run_onnx(session, batch[i:i + 32])

    t_torch = median_seconds(torch_features, args.repeat)
    t_onnx = median_seconds(onnx_features, args.repeat)
    results["features"] = {"chips": len(batch), "torch_chips_per_second": len(batch) / t_torch,
                           "onnxruntime_chips_per_second": len(batch) / t_onnx, "threads": torch.get_num_threads()}
    print(f"  features ({len(batch)} chips of {batch.shape[-1]} px, CPU, {torch.get_num_threads()} threads): torch "
          f"{len(batch) / t_torch:8.1f} chips/s, onnxruntime {len(batch) / t_onnx:8.1f} chips/s")
    write_results(f"quadkey_{settings.name}", results)


if __name__ == "__main__":
    main()
