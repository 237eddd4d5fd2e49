"""The quadkey main job: materialize a product's asset graph as real runs on a Dagster instance (what the
UI would launch): observe the scenes, the catalog (registers the quadkey partitions), chips and labels per
partition. Each run is recorded on the instance, so `dagster dev` afterwards shows history and lineage."""

from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from geoembed.quadkey.settings import QuadkeyProductSettings
from geoembed_assets.core.runner import RunSummary, product_runner
from geoembed_assets.quadkey.assets import layout_of, read_plan
from geoembed_assets.quadkey.partitions import QuadkeyKeys, quadkey_partitions
from geoembed_resources.postgres import describe_database


@dataclass
class QuadkeyRunSummary(RunSummary):
    zoom: int = 0
    partition_zoom: int = 0
    partitions: int = 0
    chips_by_class: dict = field(default_factory=dict)
    chips_with_a_label: int = 0
    classifier: dict = field(default_factory=dict)
    retrieval: dict = field(default_factory=dict)


def materialize_quadkey_product(
    settings: QuadkeyProductSettings,
    instance: dg.DagsterInstance,
    resources: dict | None = None,
    training: dict | None = None,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> QuadkeyRunSummary:
    """Materialize every asset of a quadkey product (every partition) on ``instance``. ``training``:
    {"backbone": {...}, "classifier": {...}, "features": {...}}, the run config values of those assets."""
    runner, resources = product_runner(settings, instance, resources, say, verbose)
    keys = QuadkeyKeys(settings.name)
    summary = QuadkeyRunSummary(settings.name, steps=runner.steps)
    storage = resources["storage"]

    runner.job("observe scenes", keys.observe_job)
    runner.materialize("catalog", keys.catalog)
    catalog, plan = read_plan(storage, settings.name)
    summary.zoom, summary.partition_zoom, summary.partitions = plan.zoom, plan.partition_zoom, len(plan.partitions)
    say(f"[geoembed] {settings.name}: {len(catalog.scenes)} scenes, chips at zoom {plan.zoom}, "
        f"{len(plan.partitions)} partitions at zoom {plan.partition_zoom}, {sum(plan.chips.values())} chips")
    # One run per range of partitions (not per partition): the partitions in the instance's order, the
    # order a range selects in.
    partitions = [k for k in instance.get_dynamic_partitions(quadkey_partitions(settings.name).name) if k in plan.partitions]
    totals: dict[str, int] = {}

    def chips_made(meta: dict) -> int:
        for name, n in (meta.get("chips_by_class") or {}).items():
            totals[name] = totals.get(name, 0) + int(n)
        return int(meta.get("chips", 0))

    runner.materialize_partitions("chips", keys.chips, partitions, chips_made, "partitions", "chips")
    if settings.labels is not None:
        summary.chips_with_a_label = runner.materialize_partitions(
            "labels", keys.labels, partitions, lambda meta: int(meta.get("chips_with_a_label", 0)), "partitions",
            "labelled chips")
    summary.chips_by_class = totals
    if settings.labels is not None:
        values = training or {}

        def config(op: str, which: str) -> dict | None:
            return {"ops": {op: {"config": values[which]}}} if values.get(which) else None

        backbone = runner.materialize("backbone", keys.backbone, config=config(keys.backbone_op, "backbone"))
        say(f"[geoembed] chip backbone {backbone.get('model_version')}: held-out triplet accuracy "
            f"{backbone.get('held_out_triplet_accuracy')}")
        classifier = runner.materialize("classifier", keys.classifier,
                                        config=config(keys.classifier_op, "classifier"))
        summary.classifier = {k: classifier.get(k) for k in (
            "model_version", "validation_f2", "validation_accuracy", "untrained_head", "best_epoch", "train_samples",
            "validation_samples")}
        say(f"[geoembed] chip classifier {classifier.get('model_version')}: validation F2 "
            f"{classifier.get('validation_f2')}, accuracy {classifier.get('validation_accuracy')} (untrained head "
            f"{classifier.get('untrained_head')}); ONNX in {classifier.get('onnx_classifier')}")
        runner.materialize_partitions("features", keys.features, partitions, lambda meta: int(meta.get("chips", 0)),
                                      "partitions", "chips", config=config(keys.features_op, "features"))
        retrieval = runner.materialize("retrieval", keys.retrieval)
        summary.retrieval = retrieval.get("precision_at_10") or {}
        say(f"[geoembed] chip retrieval, precision@10 of shared labels: {summary.retrieval}")
        rows = runner.materialize_partitions("database load", keys.table, partitions,
                                             lambda meta: int(meta.get("rows", 0)), "partitions", "rows")
        index = runner.materialize("index", keys.index)
        say(f"[geoembed] {rows} chips in {index.get('table')}; HNSW recall@10 {index.get('recall_at_10')}")
        summary.outputs["PostgreSQL table"] = f"{index.get('table')} at {describe_database(resources['database'])}"
    layout = layout_of(storage, settings.name)
    summary.outputs = {**summary.outputs,
        "datacubes (Zarr per partition x scene)": str(layout.outputs / "datacubes"),
        "no-data index (GeoParquet + PNG per partition)": str(layout.outputs / "nodata_index"),
        "thumbnails (PNG)": str(layout.outputs / "thumbnails"),
        **({"labels (Parquet per partition)": str(layout.outputs / "labels"),
            "models (backbone, classifier, ONNX)": str(layout.outputs / "models"),
            "chip features (Zarr per partition x scene)": str(layout.outputs / "features")} if settings.labels else {}),
        "Dagster instance": str(instance.root_directory),
    }
    summary.finish()
    return summary
