"""The land-cover main job: materialize a product's whole asset graph as real runs on a Dagster instance.

The same runs the UI would launch: observe the source, build the stencil (registers the region
partitions), samples in batches of regions, train, embeddings in batches, the map. Each run is
recorded on the instance, so `dagster dev` afterwards shows the history, lineage and metadata.
"""

from dataclasses import dataclass
from typing import Callable

import dagster as dg
import numpy as np

from geoembed.landcover.settings import ProductSettings
from geoembed.landcover.windows import EMBEDDED
from geoembed_assets.core.runner import RunSummary, product_runner
from geoembed_resources.postgres import describe_database
from geoembed_assets.landcover.partitions import LandcoverKeys, region_partitions


@dataclass
class ProductRunSummary(RunSummary):
    regions: int = 0
    cells: int = 0
    embedded_cells: int = 0
    model_version: str = ""
    quality: str = ""


def materialize_product(
    settings: ProductSettings,
    instance: dg.DagsterInstance,
    resources: dict | None = None,
    run_config: dict | None = None,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> ProductRunSummary:
    """Materialize every asset of a land-cover product (all region partitions) on ``instance``."""
    runner, resources = product_runner(settings, instance, resources, say, verbose)
    keys = LandcoverKeys(settings.name)
    summary = ProductRunSummary(settings.name, steps=runner.steps)

    runner.job("observe source", keys.observe_job)
    regions_meta = runner.materialize("stencil", keys.regions)
    partitions = instance.get_dynamic_partitions(region_partitions(settings.name).name)
    summary.regions, summary.cells = int(regions_meta.get("regions", 0)), int(regions_meta.get("cells", 0))
    say(f"[geoembed] {settings.name}: {summary.regions} regions (partitions), {summary.cells:,} cells at H3 res "
        f"{settings.resolution}")

    def cells(meta: dict) -> int:
        return int(meta.get("cells", meta.get("rows", 0)))

    runner.materialize_partitions("samples", keys.samples, partitions, cells)
    model_meta = runner.materialize("training", keys.model, config=run_config)
    summary.model_version = str(model_meta.get("model_version", ""))
    summary.quality = str(model_meta.get("quality_knn5_balanced_accuracy", ""))
    say(f"[geoembed] model {summary.model_version} trained in {model_meta.get('training_seconds')} s")
    for problem in model_meta.get("evaluation_problems") or []:
        say(f"[geoembed] WARNING: {problem}: the model's quality figures cannot be trusted "
            "(check enough_data_to_evaluate failed)")
    runner.materialize_partitions("embeddings", keys.embeddings, partitions, cells)
    map_meta = runner.materialize("map", keys.map)
    runner.materialize_partitions("database load", keys.table, partitions, cells)
    index_meta = runner.materialize("index", keys.index)
    say(f"[geoembed] HNSW index on {index_meta.get('table')}: recall@10 {index_meta.get('recall_at_10')}")

    storage = resources["storage"]
    ds = storage.open_product(settings.name)
    summary.embedded_cells = int(np.isin(ds["status"].values, EMBEDDED).sum())
    summary.outputs = {
        "embeddings (Zarr)": str(storage.embeddings_path(settings.name)),
        "samples (a Zarr store and a manifest per run)": str(storage.product_dir(settings.name) / "samples"),
        "model": str(model_meta.get("checkpoint", "")),
        "model (TorchScript)": str(model_meta.get("torchscript", "")),
        "embedding map (PNG)": str(map_meta.get("path", "")),
        "PostgreSQL table": f"{index_meta.get('table')} at {describe_database(resources['database'])}",
        "Dagster instance": str(instance.root_directory),
    }
    summary.finish()
    return summary
