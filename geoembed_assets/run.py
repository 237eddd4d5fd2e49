"""The main job: materialize a product's whole asset graph as real runs on a Dagster instance.

The same runs the UI would launch: observe the source, build the stencil (registers the region
partitions), samples in batches of regions, train, embeddings in batches, the map. Each run is
recorded on the instance, so `dagster dev` afterwards shows the history, lineage and metadata.
"""

import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from geoembed.settings import ProductSettings
from geoembed_assets.definitions import build_definitions, default_resources
from geoembed_assets.product import PARTITIONS_PER_RUN

REPO_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"
LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def ensure_dagster_home(default: Path) -> Path:
    """Use $DAGSTER_HOME, or create ``default`` with the project's dagster.yaml (local SQLite instance)."""
    home = Path(os.environ.get("DAGSTER_HOME") or default).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and REPO_DAGSTER_YAML.exists():
        shutil.copy(REPO_DAGSTER_YAML, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass
class StepTiming:
    name: str
    seconds: float
    runs: int = 1


@dataclass
class ProductRunSummary:
    product: str
    regions: int = 0
    cells: int = 0
    embedded_cells: int = 0
    model_version: str = ""
    quality: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepTiming] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key == key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return {}


def materialize_product(
    settings: ProductSettings,
    instance: dg.DagsterInstance,
    resources: dict | None = None,
    run_config: dict | None = None,
    say: Callable[[str], None] = print,
) -> ProductRunSummary:
    """Materialize every asset of a product (all region partitions) on ``instance``."""
    resources = resources or default_resources()
    defs = build_definitions([settings], resources)
    assets = list(defs.assets or [])
    name = settings.name
    summary = ProductRunSummary(name)

    def key(asset: str) -> dg.AssetKey:
        return dg.AssetKey([name, asset])

    def run(step: str, selection: list[dg.AssetKey], tags: dict | None = None, config: dict | None = None):
        started = time.perf_counter()
        merged = {**LOG_CONFIG, **(config or {})}
        result = dg.materialize(assets, selection=selection, instance=instance, resources=resources,
                                run_config=merged, tags=tags or {})
        elapsed = time.perf_counter() - started
        previous = next((s for s in summary.steps if s.name == step), None)
        if previous:
            previous.seconds += elapsed
            previous.runs += 1
        else:
            summary.steps.append(StepTiming(step, elapsed))
        return result

    started = time.perf_counter()
    defs.resolve_job_def(f"{name}_observe_source").execute_in_process(instance=instance, run_config=LOG_CONFIG)
    summary.steps.append(StepTiming("observe source", time.perf_counter() - started))

    regions_meta = _metadata(run("stencil", [key("h3_regions")]), key("h3_regions"))
    keys = instance.get_dynamic_partitions(f"{name}_regions")
    summary.regions, summary.cells = int(regions_meta.get("regions", 0)), int(regions_meta.get("cells", 0))
    say(f"[geoembed] {name}: {summary.regions} regions (partitions), {summary.cells:,} cells at H3 res {settings.resolution}")

    def batched(asset: str, label: str) -> int:
        done_cells, start = 0, time.perf_counter()
        for first in range(0, len(keys), PARTITIONS_PER_RUN):
            batch = keys[first : first + PARTITIONS_PER_RUN]
            tags = {ASSET_PARTITION_RANGE_START_TAG: batch[0], ASSET_PARTITION_RANGE_END_TAG: batch[-1]}
            meta = _metadata(run(label, [key(asset)], tags), key(asset))
            done_cells += int(meta.get("cells", meta.get("rows", 0)))
            rate = done_cells / max(time.perf_counter() - start, 1e-9)
            say(f"[geoembed] {label}: {first + len(batch)}/{len(keys)} regions, {done_cells:,} cells, {rate:,.0f} cells/s")
        return done_cells

    batched("landcover_samples", "samples")
    model_meta = _metadata(run("training", [key("embedding_model")], config=run_config), key("embedding_model"))
    summary.model_version = str(model_meta.get("model_version", ""))
    summary.quality = str(model_meta.get("quality_knn5_balanced_accuracy", ""))
    say(f"[geoembed] model {summary.model_version} trained in {model_meta.get('training_seconds')} s")
    batched("cell_embeddings", "embeddings")
    map_meta = _metadata(run("map", [key("embedding_map")]), key("embedding_map"))
    batched("embedding_table", "database load")
    index_meta = _metadata(run("index", [key("embedding_index")]), key("embedding_index"))
    say(f"[geoembed] HNSW index on {index_meta.get('table')}: recall@10 {index_meta.get('recall_at_10')}")

    storage = resources["storage"]
    ds = storage.open_product(name)
    summary.embedded_cells = int((ds["status"].values <= 2).sum())
    summary.outputs = {
        "embeddings (Zarr)": str(storage.embeddings_path(name)),
        "samples (Zarr per region)": str(storage.product_dir(name) / "samples"),
        "model": str(model_meta.get("checkpoint", "")),
        "model (TorchScript)": str(model_meta.get("torchscript", "")),
        "embedding map (PNG)": str(map_meta.get("path", "")),
        "PostgreSQL table": f"{index_meta.get('table')} at {resources['database'].resolved_dsn()}",
        "Dagster instance": str(instance.root_directory),
    }
    summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return summary
