"""The asset graph of one quadkey product ([quadkey] = partitioned by coarse quadkey):

    scene_source (observable) -> quadkey_catalog -> quadkey_chips [quadkey] -> chip_labels [quadkey]
    (a scene sensor refreshes the catalog, then the partitions a new or changed scene covers)
    quadkey_chips -> chip_backbone;  chip_backbone + chip_labels -> chip_classifier (+ ONNX)
    quadkey_chips + chip_classifier -> chip_features [quadkey] -> chip_retrieval (precision@k of shared labels)
                                       chip_features [quadkey] -> chip_table [quadkey] (PostgreSQL) -> chip_index

Each asset is built by its own small factory; bodies say what they make from what and call
``geoembed.quadkey`` for the logic; every read or write goes through a resource.
"""

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import Field

import dagster as dg
import mercantile
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geoembed.core.grids.quadkey import ground_resolution, tile_of_quadkey
from geoembed.core.lineage import content_version
from geoembed.core.progress import Progress
from geoembed.core.render import loss_curve_png, markdown_image
from geoembed.core.sinks import pgvector as db
from geoembed.core.sinks.geoparquet import write_geoparquet
from geoembed.core.sinks.zarr import open_store, write_dataset
from geoembed.core.sources import with_versions
from geoembed.imagery import encoders
from geoembed.imagery.catalog import SceneCatalog, build_catalog
from geoembed.imagery.rasters import build_raster_catalog
from geoembed.imagery.encoders.chipnet import ChipNetSpec
from geoembed.imagery.settings import ClayEncoderSettings
from geoembed.imagery.search_rows import CHIP_H3_RESOLUTION
from geoembed.imagery.stores import embeddings_dataset
from geoembed.imagery.training import NoChipsError, TrainingChips, train_chip_encoder
from geoembed.quadkey.classifier import (
    FeatureExtractor, HeadSpec, LabelledSamples, check_onnx, export_onnx, load_backbone, load_classifier, onnx_session,
    pooled_features, run_onnx, save_classifier, train_classifier, untrained_like,
)
from geoembed.quadkey.retrieval import precision_at_k, random_precision
from geoembed.quadkey.labels import LabelInputError, coverage_problem, read_label_polygons
from geoembed.quadkey.layout import QuadkeyLayout
from geoembed.quadkey.partition import (
    ChipFeatures, ChippedPartition, chip_partition, feature_table_rows, label_table, nodata_map_png, share_matrix,
)
from geoembed.quadkey.plan import QuadkeyPlan, plan_partitions, scene_key
from geoembed.quadkey.samples import SUBTILE_PIXELS, chips_with_data, concatenate, datacubes_of, subtile_samples
from geoembed.quadkey.settings import QuadkeyProductSettings
from geoembed_assets.core.timing import timed_asset
from geoembed_assets.core.failures import TRANSIENT_RETRY, fails_clearly
from geoembed_assets.core.policies import GPU_STEP, batched_backfills
from geoembed_assets.core.landing import LANDING_TAG
from geoembed_assets.core.serving import index_asset
from geoembed_assets.imagery.assets import ChipTrainingConfig, source_asset
from geoembed_assets.imagery.state import scene_files
from geoembed_assets.quadkey.partitions import QuadkeyKeys, quadkey_partitions
from geoembed_assets.quadkey.sensors import build_quadkey_scene_sensor
from geoembed_resources import InferenceDevice, PostgresDatabase, ProductStorage, RasterReader
from geoembed_resources.postgres import redacted


@dataclass(frozen=True)
class QuadkeyAssets:
    settings: QuadkeyProductSettings
    keys: QuadkeyKeys
    partitions: dg.DynamicPartitionsDefinition
    definitions: dg.Definitions


def build_quadkey_product(settings: QuadkeyProductSettings) -> QuadkeyAssets:
    """Every asset and job of one quadkey product."""
    keys = QuadkeyKeys(settings.name)
    partitions = quadkey_partitions(settings.name)
    per_quadkey = timed_asset(partitions_def=partitions, group_name=settings.name,
                          backfill_policy=batched_backfills(), retry_policy=TRANSIENT_RETRY)
    single = timed_asset(group_name=settings.name, retry_policy=TRANSIENT_RETRY)
    assets = [source_asset(settings, keys), catalog_asset(settings, keys, partitions, single),
              chips_asset(settings, keys, per_quadkey)]
    if settings.labels is not None:
        assets += [labels_asset(settings, keys, per_quadkey), backbone_asset(settings, keys, single),
                   classifier_asset(settings, keys, single), features_asset(settings, keys, per_quadkey),
                   retrieval_asset(settings, keys, single), table_asset(settings, keys, per_quadkey),
                   index_asset(settings.name, keys.index, keys.table, "chips", single,
                               "The search indexes and the cosine HNSW index of the current classifier's chip "
                               "table, with its recall against exact search.")]
    definitions = dg.Definitions(
        assets=assets, jobs=[dg.define_asset_job(keys.observe_job, selection=dg.AssetSelection.assets(keys.source))],
        sensors=[build_quadkey_scene_sensor(settings, keys)])
    return QuadkeyAssets(settings, keys, partitions, definitions)


def layout_of(storage: ProductStorage, product: str) -> QuadkeyLayout:
    return QuadkeyLayout(storage.outputs_dir(product), storage.product_dir(product))


def read_plan(storage: ProductStorage, product: str) -> tuple[SceneCatalog, QuadkeyPlan]:
    layout = layout_of(storage, product)
    catalog = SceneCatalog.model_validate(storage.read_json(layout.catalog, f"the scene catalog of {product!r}"))
    return catalog, QuadkeyPlan.model_validate(storage.read_json(layout.plan, f"the quadkey plan of {product!r}"))


def _checked(plan: QuadkeyPlan, keys: list[str], product: str) -> list[str]:
    unknown = [k for k in keys if k not in plan.partitions]
    if unknown:
        raise dg.Failure(f"quadkeys {unknown[:5]} are not partitions of {product!r}'s current plan (zoom "
                         f"{plan.partition_zoom}); re-materialize quadkey_catalog")
    return keys


def catalog_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, partitions: dg.DynamicPartitionsDefinition,
                  single) -> dg.AssetsDefinition:
    name = settings.name

    @single(key=keys.catalog, deps=[keys.source], code_version="1", kinds={"stac", "python"},
            pool=f"{name}_catalog")  # one catalog at a time: each compares itself with the previous one
    @fails_clearly
    def quadkey_catalog(context: dg.AssetExecutionContext, raster_reader: RasterReader, storage: ProductStorage):
        """The scenes (Sentinel-2 band files or STAC items, or the configured rasters; with content versions),
        the web-mercator zoom of the chips (configured, or the one whose pixel is nearest the imagery's ground
        resolution at its latitude) and of the partitions, and which coarse quadkeys each scene covers: those
        become partitions."""
        layout = layout_of(storage, name)
        previous = (SceneCatalog.model_validate(storage.read_json(layout.catalog, "the scene catalog"))
                    if layout.catalog.exists() else None)
        files = with_versions(scene_files(raster_reader, settings), previous.files if previous else {})
        if settings.rasters is not None:
            catalog = build_raster_catalog(settings.model_dump(mode="json"), settings.rasters, files, content_version)
        else:
            catalog = build_catalog(settings, files, raster_reader.read_text, content_version)
        plan = plan_partitions(catalog.scenes, settings.bands, settings.chip_size, settings.zoom,
                               settings.partition_zoom, raster_reader.open)
        new = sorted(set(plan.partitions) - set(context.instance.get_dynamic_partitions(partitions.name)))
        if new:
            context.instance.add_dynamic_partitions(partitions.name, new)
        changed_scenes = {f"{t}|{d}" for t, d in catalog.changed_since(previous)}
        changed = [k for k, scenes in plan.partitions.items() if changed_scenes & set(scenes)]
        storage.write_json(layout.catalog, catalog.to_json())
        storage.write_json(layout.plan, plan.model_dump(mode="json"))
        latitude = mercantile.ul(tile_of_quadkey(next(iter(plan.partitions)))).lat if plan.partitions else 0.0
        return dg.MaterializeResult(metadata={
            "scenes": len(catalog.scenes), "zoom": plan.zoom, "partition_zoom": plan.partition_zoom,
            "pixel_metres": round(ground_resolution(plan.zoom, latitude, plan.chip_size), 2),
            "partitions": len(plan.partitions), "new_partitions": len(new),
            "chips": sum(plan.chips.values()), "changed_partitions": dg.MetadataValue.json(changed),
            "rejected": dg.MetadataValue.json(catalog.rejected),
            "plan": dg.MetadataValue.path(str(layout.plan)),
            "trigger": context.run.tags.get(LANDING_TAG, ""),
        })

    return quadkey_catalog


def chips_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, per_quadkey) -> dg.AssetsDefinition:
    name = settings.name

    @per_quadkey(key=keys.chips, deps=[keys.catalog], code_version="1", kinds={"zarr", "parquet"})
    @fails_clearly
    def quadkey_chips(context: dg.AssetExecutionContext, raster_reader: RasterReader, storage: ProductStorage):
        """Per coarse quadkey: every scene covering it resampled into its web-mercator tiles (bilinear), a
        datacube per scene (Zarr; chip_id = quadkey, georeferenced in EPSG:3857), an RGB thumbnail per chip
        with data, and the no-data index (GeoParquet): every tile of the partition for every scene, as no
        data, partial data or all data with its valid share. Later steps skip chips without data."""
        catalog, plan = read_plan(storage, name)
        layout = layout_of(storage, name)
        scenes = {scene_key(s): s for s in catalog.scenes}
        partitions = _checked(plan, list(context.partition_keys), name)
        progress = Progress("quadkey chips", len(partitions), context.log.info, unit="chips")
        tables, footprints, totals = [], [], {"all_data": 0, "partial": 0, "no_data": 0}

        def save_thumbnail(partition: str, scene: str, quadkey: str, png: bytes) -> str:
            path = layout.partition_thumbnail(partition, scene, quadkey)
            storage.write_bytes(path, png)
            return str(path)

        for key in partitions:
            result = chip_partition(key, plan, scenes, settings.bands, raster_reader.open,
                                    partial(layout.partition_datacube, key), partial(save_thumbnail, key),
                                    {"product": name})
            write_geoparquet(layout.nodata_index(key), result.table, result.footprints, {
                "geoembed:partition": key, "geoembed:zoom": str(plan.zoom),
                "geoembed:scene_versions": ",".join(scenes[s].version for s in plan.partitions[key])})
            storage.write_bytes(layout.nodata_picture(key), nodata_map_png(result, f"{name} {key}: no-data index"))
            totals = {k: totals[k] + v for k, v in result.classes.items()}
            tables.append(result.table)
            footprints.extend(result.footprints)
            progress.done(key, result.table.num_rows, suffix=f" ({result.classes['no_data']} without data)")
        whole = ChippedPartition(pa.concat_tables(tables), footprints, 0, 0.0)
        png = nodata_map_png(whole, f"{name}: no-data index of {len(partitions)} partitions (zoom {plan.zoom})")
        return dg.MaterializeResult(metadata={
            "partitions": len(partitions), "chips": progress.items, "chips_by_class": dg.MetadataValue.json(totals),
            "chips_without_data": totals["no_data"], "chips_per_second": round(progress.rate(), 2),
            "compute_seconds": round(progress.seconds, 3), "zoom": plan.zoom,
            "nodata_map": dg.MetadataValue.md(markdown_image(png, "no-data index")),
            "nodata_index": dg.MetadataValue.path(str(layout.nodata_index(partitions[-1]))),
        })

    return quadkey_chips


def labels_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, per_quadkey) -> dg.AssetsDefinition:
    name = settings.name
    config = settings.labels

    @per_quadkey(key=keys.labels, deps=[keys.chips], code_version="1", kinds={"parquet"}, check_specs=[
        dg.AssetCheckSpec("labels_cover_chips", asset=keys.labels, description=(
            "The labelled polygons cover some chip of these partitions (none: another area or a wrong CRS)."))])
    @fails_clearly
    def chip_labels(context: dg.AssetExecutionContext, storage: ProductStorage):
        """Per coarse quadkey: every chip with data (chips without data are skipped, and counted), the share of
        it each class of the labelled polygons covers, and its multilabel target: the classes covering at
        least ``min_share`` of it (Parquet)."""
        _, plan = read_plan(storage, name)
        layout = layout_of(storage, name)
        partitions = _checked(plan, list(context.partition_keys), name)
        labels = read_label_polygons(config.location, config.class_field, plan.grid.crs, config.classes)
        counts = {c: 0 for c in labels.classes}
        chips = skipped = covered = touched = 0
        for key in partitions:
            index = pq.read_table(layout.nodata_index(key))
            table = label_table(index, labels, config.min_share)
            storage.write_bytes(layout.labels(key), _parquet_bytes(table))
            for names in table["labels"].to_pylist():
                for c in names:
                    counts[c] += 1
            chips += table.num_rows
            skipped += index.num_rows - table.num_rows
            covered += sum(1 for names in table["labels"].to_pylist() if names)
            touched += int((share_matrix(table) > 0).any(axis=1).sum())
        if skipped:
            context.log.info(f"{skipped} chips without data skipped")
        why = coverage_problem(labels, chips, touched)
        return dg.MaterializeResult(
            metadata={"partitions": len(partitions), "chips": chips, "chips_without_data_skipped": skipped,
                      "chips_with_a_label": covered, "chips_per_class": dg.MetadataValue.json(counts),
                      "classes": dg.MetadataValue.json(list(labels.classes)), "min_share": config.min_share,
                      "labels": dg.MetadataValue.path(str(layout.labels(partitions[-1])))},
            check_results=[dg.AssetCheckResult(check_name="labels_cover_chips", passed=not why,
                                               metadata={"chips_with_a_label": covered, "problem": why})])

    return chip_labels


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


class ClassifierConfig(dg.Config):
    """Hyper-parameters of the chip classifier's head (run config of ``chip_classifier``)."""

    epochs: int = Field(default=30, ge=1, le=10_000)
    batch_size: int = Field(default=32, ge=2, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    hidden: list[int] = Field(default_factory=lambda: [128, 64], description="Widths of the head's hidden layers.")
    dropout: float = Field(default=0.2, ge=0, lt=1)
    unfreeze_last_block: bool = Field(default=False, description="Also train the backbone's last block.")
    held_out_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of partitions held out.")
    subtile_split: int | None = Field(default=None, ge=1, le=16, description=(
        "Each chip trains as split x split sub-tiles (default: sub-tiles of 64 px, one per chip of 64 px)."))
    seed: int = 0


def _datacubes(storage: ProductStorage, name: str, plan: QuadkeyPlan):
    layout = layout_of(storage, name)
    return datacubes_of(plan.partitions, layout.partition_datacube, lambda p: p.exists())


def backbone_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, single) -> dg.AssetsDefinition:
    name = settings.name

    @single(key=keys.backbone, deps=[keys.chips], code_version="2", kinds={"pytorch"})
    @fails_clearly
    def chip_backbone(context: dg.AssetExecutionContext, config: ChipTrainingConfig, storage: ProductStorage):
        """The classifier's frozen backbone. Either our ChipNet (the imagery pipeline's encoder), trained
        self-supervised on the product's chips with data (triplets of crops: neighbours alike, distant chips
        apart) and scored on held-out blocks of chips; or Clay's encoder from the configured local checkpoint
        (``backbone: {kind: clay}``), used as it is. Versioned by content hash; nothing is downloaded."""
        layout = layout_of(storage, name)
        if isinstance(settings.backbone, ClayEncoderSettings):
            clay = settings.backbone
            loaded = encoders.clay_encoder(clay.checkpoint_path, clay.size, settings.backbone_bands, clay.sha256, False)
            pointer = {"model_version": loaded.version, "kind": "clay", "checkpoint": clay.checkpoint_path,
                       "checkpoint_sha256": loaded.description["checkpoint_sha256"], "size": clay.size,
                       "bands": loaded.bands}
            storage.write_json(layout.current_backbone, pointer)
            return dg.MaterializeResult(data_version=dg.DataVersion(loaded.version), metadata={
                **{k: dg.MetadataValue.json(v) if isinstance(v, list) else v for k, v in pointer.items()},
                "training": "none: Clay's pretrained weights, frozen"})
        _, plan = read_plan(storage, name)
        parts = [chips_with_data(open_store(path, "datacube"), settings.bands)
                 for _, _, path in _datacubes(storage, name, plan)]
        parts = [p for p in parts if len(p[0])]
        if not parts:
            raise NoChipsError(f"no chip of {name!r} with data is materialized; materialize quadkey_chips first")
        reflectance = np.concatenate([p[0] for p in parts])
        chips = TrainingChips(reflectance, np.zeros(len(reflectance), np.int64), np.concatenate([p[1] for p in parts]),
                              np.concatenate([p[2] for p in parts]))
        spec = settings.backbone
        trained = train_chip_encoder(ChipNetSpec(tuple(settings.bands), spec.embedding_dim, spec.patch_dim,
                                                 spec.patch_size, spec.width), chips, config, log=context.log.info,
                                     warn=context.log.warning)
        folder = storage.model_dir(name, trained.version)
        storage.write_bytes(folder / "backbone.pt", encoders.save_chipnet(trained.model, {"quality": trained.quality}))
        storage.write_json(layout.current_backbone, {"model_version": trained.version, "kind": "geoembed",
                                                     "folder": str(folder)})
        return dg.MaterializeResult(data_version=dg.DataVersion(trained.version), metadata={
            "model_version": trained.version, "kind": "geoembed", "chips": len(chips),
            "held_out_triplet_accuracy": dg.MetadataValue.json(trained.quality),
            "training_seconds": round(trained.seconds, 1),
            "loss_curve": dg.MetadataValue.md(markdown_image(loss_curve_png(trained.losses, f"{name}: backbone"),
                                                             "triplet loss")),
            "checkpoint": dg.MetadataValue.path(str(folder / "backbone.pt")),
        })

    return chip_backbone


def classifier_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, single) -> dg.AssetsDefinition:
    name = settings.name
    label_settings = settings.labels

    @single(key=keys.classifier, deps=[keys.backbone, keys.labels], code_version="1", kinds={"pytorch", "onnx"},
            check_specs=[
                dg.AssetCheckSpec("onnx_matches_torch", asset=keys.classifier, description=(
                    "The ONNX classifier and feature extractor give torch's outputs on the validation samples "
                    "(largest absolute difference within the tolerance).")),
                dg.AssetCheckSpec("beats_untrained_head", asset=keys.classifier, description=(
                    "Validation F2 of the trained head exceeds the same network with its head untrained."))])
    @fails_clearly
    def chip_classifier(context: dg.AssetExecutionContext, config: ClassifierConfig, storage: ProductStorage):
        """IMAGESIM's multilabel classifier: the frozen backbone with a trained head (hidden layers, batch
        norm, ReLU, dropout), BCE-with-logits, accuracy and F2 per epoch on held-out partitions (torchmetrics);
        the epoch with the best validation F2 is kept. Trained on sub-tiles of the chips, each labelled from
        the polygons over its own footprint. Exported to ONNX (classifier and feature extractor, dynamic
        batch) and checked with onnxruntime. Versioned by content hash."""
        _, plan = read_plan(storage, name)
        layout = layout_of(storage, name)
        current = storage.read_json(layout.current_backbone, f"the chip backbone of {name!r}")
        backbone = load_backbone(current, settings.bands,
                                 lambda: (storage.model_dir(name, current["model_version"]) / "backbone.pt").read_bytes())
        labels = read_label_polygons(label_settings.location, label_settings.class_field, plan.grid.crs,
                                     label_settings.classes)
        split = config.subtile_split or max(1, plan.chip_size // SUBTILE_PIXELS)
        size = plan.chip_size // split
        samples = concatenate([subtile_samples(open_store(path, "datacube"), partition, plan.grid, settings.bands,
                                               labels, split)
                               for partition, _, path in _datacubes(storage, name, plan)],
                              len(labels.classes), size, len(settings.bands))
        problem = coverage_problem(labels, len(samples.shares), int((samples.shares > 0).any(axis=1).sum()))
        if problem:  # nothing to learn from: say which file, before anything is written
            raise LabelInputError(problem)
        head = HeadSpec(labels.classes, tuple(config.hidden), config.dropout, config.unfreeze_last_block)
        data = LabelledSamples(samples.reflectance, samples.shares >= label_settings.min_share, samples.partition)
        trained = train_classifier(backbone, data, head, config.epochs, config.batch_size, config.learning_rate,
                                   config.held_out_fraction, config.seed, log=context.log.info)
        folder = storage.model_dir(name, trained.version)
        storage.write_bytes(folder / "classifier.pt", save_classifier(trained.model, {
            "backbone_version": current["model_version"], "best_epoch": trained.best_epoch}))
        held = np.isin(samples.partition, trained.validation_groups)
        probe = samples.reflectance[held][:64] if held.any() else samples.reflectance[:64]
        gaps = {}
        for file_name, module in (("classifier.onnx", trained.model), ("features.onnx", FeatureExtractor(trained.model))):
            data_onnx = export_onnx(module, len(settings.bands), plan.chip_size)
            storage.write_bytes(folder / file_name, data_onnx)
            gaps[file_name] = check_onnx(data_onnx, module, probe, what=f"{folder / file_name}")
        pointer = {"model_version": trained.version, "folder": str(folder), "backbone_version": current["model_version"],
                   "backbone_kind": current.get("kind", "geoembed"),
                   "validation_partitions": sorted(map(str, trained.validation_groups))}
        storage.write_json(layout.current_classifier, pointer)
        storage.write_json(storage.current_model_path(name), pointer)  # the model whose features are served
        best = trained.best
        rows = "\n".join(f"| {e.epoch + 1} | {e.train_loss:.4f} | {e.validation_loss:.4f} | {e.validation_accuracy:.3f} "
                         f"| {e.validation_f2:.3f} |" for e in trained.epochs)
        table = ("| epoch | train loss | validation loss | accuracy | F2 |\n|---|---|---|---|---|\n" + rows)
        curve = loss_curve_png([e.train_loss for e in trained.epochs], f"{name}: classifier head, BCE per epoch")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(trained.version),
            metadata={
                "model_version": trained.version, "backbone_version": current["model_version"],
                "classes": dg.MetadataValue.json(list(labels.classes)),
                "train_samples": trained.train_samples, "validation_samples": trained.validation_samples,
                "validation_partitions": dg.MetadataValue.json(sorted(trained.validation_groups)),
                "best_epoch": trained.best_epoch + 1, "validation_accuracy": round(best.validation_accuracy, 4),
                "validation_f2": round(best.validation_f2, 4),
                "untrained_head": dg.MetadataValue.json({k: round(v, 4) for k, v in trained.untrained.items()}),
                "epochs": dg.MetadataValue.md(table),
                "loss_curve": dg.MetadataValue.md(markdown_image(curve, "classifier loss")),
                "training_seconds": round(trained.seconds, 1),
                "onnx_classifier": dg.MetadataValue.path(str(folder / "classifier.onnx")),
                "onnx_features": dg.MetadataValue.path(str(folder / "features.onnx")),
            },
            check_results=[
                dg.AssetCheckResult(check_name="onnx_matches_torch", passed=True,
                                    metadata={f"max_abs_difference_{k.split('.')[0]}": v for k, v in gaps.items()}),
                dg.AssetCheckResult(check_name="beats_untrained_head", passed=best.validation_f2 > trained.untrained["f2"],
                                    severity=dg.AssetCheckSeverity.WARN,
                                    metadata={"trained_f2": best.validation_f2, "untrained_f2": trained.untrained["f2"]}),
            ])

    return chip_classifier


class FeaturesConfig(dg.Config):
    """How chip_features runs the feature extractor (per deployment)."""

    runtime: Literal["torch", "onnxruntime"] = Field(default="torch", description=(
        "torch (on the inference device: GPU when there is one) or the exported ONNX file with onnxruntime (CPU)."))


def _current_classifier(storage: ProductStorage, name: str):
    current = storage.read_json(layout_of(storage, name).current_classifier, f"the chip classifier of {name!r}")
    return current, Path(current["folder"])


def features_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, per_quadkey) -> dg.AssetsDefinition:
    name = settings.name

    @per_quadkey(key=keys.features, deps=[keys.chips, keys.classifier], code_version="1",
                 kinds={"pytorch", "onnx", "zarr"}, **GPU_STEP)
    @fails_clearly
    def chip_features(context: dg.AssetExecutionContext, config: FeaturesConfig, inference_device: InferenceDevice,
                      storage: ProductStorage):
        """Per coarse quadkey: the classifier's features (the layer before its logits) of every chip with data
        of every scene, through torch or the ONNX file (run config ``runtime``), in a Zarr store per scene
        with the model and scene versions of each chip."""
        catalog, plan = read_plan(storage, name)
        layout = layout_of(storage, name)
        scenes = {scene_key(s): s for s in catalog.scenes}
        current, folder = _current_classifier(storage, name)
        model, _ = load_classifier((folder / "classifier.pt").read_bytes())
        if config.runtime == "onnxruntime":
            session = onnx_session((folder / "features.onnx").read_bytes())
            extract, device = (lambda x: run_onnx(session, x)), "onnxruntime (CPU)"
        else:
            extractor = FeatureExtractor(model)
            extract = partial(inference_device.infer, extractor, finish=lambda z: z.float())
            device = inference_device.describe()
        progress = Progress("chip features", len(context.partition_keys), context.log.info, unit="chips")
        for key in _checked(plan, list(context.partition_keys), name):
            chips = 0
            for scene in plan.partitions[key]:
                path = layout.partition_datacube(key, scene)
                if not path.exists():
                    continue
                cube = open_store(path, "datacube")
                reflectance, rows, cols = chips_with_data(cube, settings.bands)
                features = extract(np.nan_to_num(reflectance)) if len(reflectance) else np.zeros((0, 0), np.float32)
                ds = embeddings_dataset(plan.grid.chip_ids(rows, cols), rows, cols, np.asarray(features), None,
                                        current["model_version"], scenes[scene].version,
                                        {"product": name, "partition": key, "scene": scene, "runtime": config.runtime,
                                         "features": "the classifier's layer before its logits"})
                write_dataset(layout.features(current["model_version"], key, scene), ds)
                chips += len(rows)
            progress.done(key, chips, suffix=f" on {device}")
        return dg.MaterializeResult(metadata={
            "model_version": current["model_version"], "partitions": len(context.partition_keys),
            "chips": progress.items, "chips_per_second": round(progress.rate(), 1), "runtime": config.runtime,
            "device": device, "store": dg.MetadataValue.path(str(layout.outputs / "features" / current["model_version"])),
        })

    return chip_features


def retrieval_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, single) -> dg.AssetsDefinition:
    name = settings.name

    @single(key=keys.retrieval, deps=[keys.features, keys.labels], code_version="2", kinds={"python"}, check_specs=[
        dg.AssetCheckSpec("beats_random_retrieval", asset=keys.retrieval, description=(
            "precision@10 of shared labels with the classifier's features, for query chips of the partitions the "
            "classifier held out, exceeds random retrieval's."))])
    @fails_clearly
    def chip_retrieval(context: dg.AssetExecutionContext, storage: ProductStorage):
        """How well the features find chips that share a label: precision@10 of shared labels among each
        labelled chip's nearest chips (cosine, searched among every chip), for query chips of the partitions the
        classifier never trained on (the headline) and for every chip; beside the frozen backbone's own
        features, the same backbone untrained, and random retrieval."""
        _, plan = read_plan(storage, name)
        layout = layout_of(storage, name)
        current, folder = _current_classifier(storage, name)
        model, _ = load_classifier((folder / "classifier.pt").read_bytes())
        names, features, reflectance, partitions = [], [], [], []
        for key, scenes in plan.partitions.items():
            table = pq.read_table(layout.labels(key)).to_pylist() if layout.labels(key).exists() else []
            by_chip = {(r["chip_id"], r["scene_id"]): set(r["labels"]) for r in table}
            for scene in scenes:
                path = layout.features(current["model_version"], key, scene)
                if not path.exists():
                    continue
                ds = open_store(path, "chip features")
                if not ds.sizes.get("chip", 0):
                    continue
                cube = open_store(layout.partition_datacube(key, scene), "datacube")
                refl, _, _ = chips_with_data(cube, settings.bands)
                scene_id = str(cube.attrs["scene_id"])
                names += [by_chip.get((str(c), scene_id), set()) for c in ds["chip_id"].values]
                features.append(ds["embedding"].values)
                reflectance.append(refl)
                partitions += [key] * len(refl)
        if not features:
            raise dg.Failure(f"no chip features of {name!r} are materialized; materialize chip_features first")
        held_out = np.isin(partitions, current.get("validation_partitions") or [])
        pixels = np.nan_to_num(np.concatenate(reflectance))
        candidates = {"classifier_features": np.concatenate(features),
                      "backbone_features": pooled_features(model.backbone, pixels),
                      "untrained_backbone": pooled_features(untrained_like(model.backbone), pixels)}

        def scores_for(among: np.ndarray | None) -> dict[str, float]:
            found = {k: precision_at_k(x, names, among=among) for k, x in candidates.items()}
            return {**{k: round(v, 4) for k, v in found.items()}, "random": round(random_precision(names, among), 4)}

        scores, every_chip = scores_for(held_out if held_out.any() else None), scores_for(None)
        queries = sum(1 for n, h in zip(names, held_out) if n and (h or not held_out.any()))
        storage.write_json(layout.retrieval, {"model_version": current["model_version"], "precision_at_10": scores,
                                              "precision_at_10_every_chip": every_chip, "chips": len(names),
                                              "labelled_chips": sum(1 for n in names if n), "held_out_queries": queries})
        passed = scores["classifier_features"] > scores["random"]
        return dg.MaterializeResult(
            metadata={"precision_at_10": dg.MetadataValue.json(scores),
                      "precision_at_10_every_chip": dg.MetadataValue.json(every_chip),
                      "chips": len(names), "labelled_chips": sum(1 for n in names if n),
                      "held_out_query_chips": queries,
                      "held_out_partitions": dg.MetadataValue.json(current.get("validation_partitions") or []),
                      "model_version": current["model_version"]},
            check_results=[dg.AssetCheckResult(check_name="beats_random_retrieval", passed=bool(passed),
                                               severity=dg.AssetCheckSeverity.WARN, metadata=scores)])

    return chip_retrieval


def table_asset(settings: QuadkeyProductSettings, keys: QuadkeyKeys, per_quadkey) -> dg.AssetsDefinition:
    name = settings.name

    @per_quadkey(key=keys.table, deps=[keys.features], code_version="1", kinds={"postgres"})
    @fails_clearly
    def chip_table(context: dg.AssetExecutionContext, storage: ProductStorage, database: PostgresDatabase):
        """Per coarse quadkey: the chip features in PostgreSQL (pgvector), one table per classifier version, by
        the same code path as the other products: each partition x date's rows replaced in one transaction,
        keyed by quadkey and date, with the tile's footprint and the H3 cell of its centre for area filters.
        ``geoembed similar --product <name> --chip <quadkey>`` searches it."""
        catalog, plan = read_plan(storage, name)
        layout = layout_of(storage, name)
        scenes = {scene_key(s): s for s in catalog.scenes}
        current, _ = _current_classifier(storage, name)
        version = current["model_version"]
        progress = Progress("chip table", len(context.partition_keys), context.log.info, unit="rows")
        seconds, tables = 0.0, set()
        with database.connect() as conn:
            for key in _checked(plan, list(context.partition_keys), name):
                index = pq.read_table(layout.nodata_index(key)).to_pylist()
                valid = {(r["chip_id"], r["scene_id"]): 1.0 - r["nodata_fraction"] for r in index}
                by_date: dict[str, list[ChipFeatures]] = {}
                for scene in plan.partitions[key]:
                    path = layout.features(version, key, scene)
                    if not path.exists():
                        continue
                    ds = open_store(path, "chip features")
                    ids = ds["chip_id"].values
                    s = scenes[scene]
                    by_date.setdefault(s.date, []).append(ChipFeatures(
                        s, ids, ds["embedding"].values, np.array([valid.get((str(q), s.scene_id), 0.0) for q in ids])))
                rows_loaded = 0
                for date, parts in sorted(by_date.items()):
                    rows = feature_table_rows(key, date, parts, version)
                    if not len(rows.keys):
                        continue
                    table = db.ensure_embedding_table(conn, name, version, rows.embedding.shape[1], CHIP_H3_RESOLUTION,
                                                      db.CHIPS, meta={"chip_size": plan.chip_size, "grid": "quadkey",
                                                                      "zoom": plan.zoom})
                    tables.add(table)
                    seconds += db.replace_partition(conn, table, rows, db.CHIPS)
                    rows_loaded += len(rows.keys)
                progress.done(key, rows_loaded)
        return dg.MaterializeResult(metadata={
            "rows": progress.items, "tables": ", ".join(sorted(tables)), "model_version": version,
            "rows_per_second": round(progress.items / max(seconds, 1e-9), 1),
            "database": redacted(database.resolved_dsn())})

    return chip_table
