"""The imagery main job: materialize a product's whole asset graph as real runs on a Dagster instance
(the runs the UI would launch): observe the scenes, the catalog (registers tile and date partitions),
chips per scene, the encoder, embeddings per scene, change and GeoParquet per tile, the chip table and
its index. Each run is recorded on the instance, so `dagster dev` afterwards shows history and lineage."""

from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from geoembed.imagery.settings import ImageryProductSettings
from geoembed_assets.core.runner import RunSummary, product_runner
from geoembed_resources.postgres import describe_database
from geoembed_assets.imagery.partitions import ImageryKeys, scene_key
from geoembed_assets.imagery.state import layout_of, read_catalog


@dataclass
class ImageryRunSummary(RunSummary):
    tiles: list[str] = field(default_factory=list)
    scenes: int = 0
    chips: int = 0
    embedded_chips: int = 0
    model_version: str = ""
    quality: dict = field(default_factory=dict)
    changed: int = 0


def materialize_imagery_product(
    settings: ImageryProductSettings,
    instance: dg.DagsterInstance,
    resources: dict | None = None,
    run_config: dict | None = None,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> ImageryRunSummary:
    """Materialize every asset of an imagery product (every scene of its tiles) on ``instance``."""
    runner, resources = product_runner(settings, instance, resources, say, verbose)
    keys = ImageryKeys(settings.name)
    summary = ImageryRunSummary(settings.name, steps=runner.steps)
    storage = resources["storage"]

    runner.job("observe scenes", keys.observe_job)
    runner.materialize("catalog", keys.catalog)
    catalog = read_catalog(storage, settings.name)
    summary.tiles, summary.scenes = catalog.tiles, len(catalog.scenes)
    say(f"[geoembed] {settings.name}: tiles {catalog.tiles}, {len(catalog.scenes)} scenes "
        f"({', '.join(s.scene_id for s in catalog.scenes[:6])}{' ...' if len(catalog.scenes) > 6 else ''})")
    scenes = [scene_key(s.tile, s.date) for s in catalog.scenes]

    def each_scene(step: str, key: dg.AssetKey, count: str) -> int:
        done = 0
        for i, partition in enumerate(scenes):
            meta = runner.materialize(step, key, partition_key=str(partition))
            done += int(meta.get(count, 0))
            say(f"[geoembed] {step}: {i + 1}/{len(scenes)} scenes, {done:,} chips")
        return done

    summary.chips = each_scene("chips", keys.chips, "chips_in_datacubes")
    encoder_meta = runner.materialize("encoder", keys.encoder, config=run_config)
    summary.model_version = str(encoder_meta.get("model_version", ""))
    summary.quality = encoder_meta.get("quality_triplet_accuracy") or {}
    say(f"[geoembed] chip encoder {summary.model_version} ({encoder_meta.get('kind')})"
        + (f", held-out triplet accuracy {summary.quality}" if summary.quality else ""))
    for problem in encoder_meta.get("evaluation_problems") or []:
        say(f"[geoembed] WARNING: {problem}: the encoder's quality figures cannot be trusted "
            "(check enough_data_to_evaluate failed)")
    summary.embedded_chips = each_scene("embeddings", keys.embeddings, "chips")
    tiles_with_scenes = sorted({s.tile for s in catalog.scenes})
    files = []
    for tile in tiles_with_scenes:
        change = runner.materialize("change", keys.change, partition_key=tile)
        summary.changed += int(change.get("changed_chip_dates", 0))
        files.append(str(runner.materialize("geoparquet", keys.geoparquet, partition_key=tile)
                         .get("file", "")))
    each_scene("database load", keys.table, "rows")
    index = runner.materialize("index", keys.index)
    say(f"[geoembed] HNSW index on {index.get('table')}: recall@10 {index.get('recall_at_10')}")
    layout = layout_of(storage, settings.name)
    summary.outputs = {
        "datacubes (Zarr per tile x date)": str(layout.outputs / "datacubes"),
        "chip tables (GeoParquet)": str(layout.outputs / "chips"),
        "thumbnails (PNG)": str(layout.outputs / "thumbnails"),
        "embeddings (Zarr)": str(layout.outputs / "embeddings" / summary.model_version),
        "GeoParquet (Clay layout)": ", ".join(files),
        "change over time": str(layout.outputs / "change" / summary.model_version),
        "chip grids (GeoJSON)": str(layout.outputs / "chip_grids"),
        "PostgreSQL table": f"{index.get('table')} at {describe_database(resources['database'])}",
        "Dagster instance": str(instance.root_directory),
    }
    summary.finish()
    return summary
