"""The asset graph of one embedding product ([region] = partitioned by H3 region):

    landcover_source (observable) -> h3_regions -> landcover_samples [region] -> embedding_model
    landcover_samples [region] + embedding_model -> cell_embeddings [region] -> embedding_map
    cell_embeddings [region] -> embedding_table [region] (PostgreSQL) -> embedding_index (HNSW)

Assets are thin: the logic lives in ``geoembed`` and every read or write goes through a resource.
"""


import contextlib
import functools
import json
import time
from dataclasses import dataclass

import dagster as dg
import numpy as np
import rasterio.errors
from pydantic import Field

from geoembed import db
from geoembed import model as encoder
from geoembed.evaluation import knn_balanced_accuracy, pca_features, principal_rgb, split_regions
from geoembed.grid import ProductLayout, cell_centres, parse_region_key, region_cells, region_key
from geoembed.raster import RasterInfo, RasterInputError
from geoembed.render import embedding_map_png, loss_curve_png, markdown_image
from geoembed.sampling import EMBEDDED, STATUSES, Legend, RasterBlocks, sample_mosaic
from geoembed.sources import combined_version, manifest_version, newest_first
from geoembed.settings import ProductSettings
from geoembed.stencil import FileStencil, merge_stencils, product_legend, scan_regions
from geoembed.stores import NOT_COMPUTED, decode_version, encode_version, samples_dataset
from geoembed_resources import DaskCluster, InferenceDevice, PostgresDatabase, ProductStorage, RasterReader
from geoembed_assets.failures import TRANSIENT_RETRY, fails_clearly
from geoembed_assets.landing import LANDING_TAG, build_landing_sensor
from geoembed_resources.postgres import redacted

# Partitions materialized per run when a backfill covers many regions.
PARTITIONS_PER_RUN = 64
# Derived assets refresh themselves when what they are made from changes: a retrained model (new
# model version) makes every embedding partition, the tables, the map and the index stale, and
# Dagster's automation sensor (run by the daemon) requests them. Training itself is never automatic.
REFRESH_WHEN_UPSTREAM_CHANGES = dg.AutomationCondition.eager()
# On Kubernetes (deploy/k8s/, dagster-k8s's k8s_job_executor) each inference step runs in its own pod
# that requests one NVIDIA GPU and is scheduled onto GPU nodes; other executors ignore this tag.
GPU_STEP_K8S_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
        }
    },
    "pod_spec_config": {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


class TrainingConfig(dg.Config):
    """Hyper-parameters of the triplet training (run config; defaults suit the global demo)."""

    steps: int = Field(default=1000, ge=1, le=1_000_000)
    batch_size: int = Field(default=256, ge=2, le=65536)
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    margin: float = Field(default=1.0, gt=0, le=2.0, description="Triplet margin (unit vectors: distances <= 2).")
    positive_rings: int = Field(default=1, ge=1, le=10, description="Positives lie within this many H3 steps.")
    max_train_cells: int = Field(default=60_000, ge=10)
    max_eval_cells: int = Field(default=30_000, ge=10)
    held_out_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0


@dataclass(frozen=True)
class ProductAssets:
    settings: ProductSettings
    regions: dg.DynamicPartitionsDefinition
    definitions: dg.Definitions
    source_key: dg.AssetKey

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.settings.name, name])


def _stencil_state(storage: ProductStorage, product: str) -> dict:
    return storage.read_json(storage.stencil_path(product), f"the H3 stencil of product {product!r}")


def _layout(state: dict, settings: ProductSettings) -> ProductLayout:
    regions = np.array([int(k, 16) for k in state["regions"]], dtype=np.uint64)
    return ProductLayout.build(regions, settings.resolution, settings.region_res)


def _legend(state: dict) -> Legend:
    return Legend.from_mapping({int(k): v for k, v in state["legend"].items()})


def _checked_keys(context: dg.AssetExecutionContext, settings: ProductSettings, state: dict) -> list[str]:
    keys = list(context.partition_keys)
    for key in keys:
        parse_region_key(key, settings.region_res)
        if key not in state["cells_per_region"]:
            raise dg.Failure(
                f"region {key!r} is not in the current stencil of {settings.name!r}; re-materialize h3_regions"
            )
    return keys


def build_product(settings: ProductSettings) -> ProductAssets:
    name = settings.name
    group = name
    regions_partitions = dg.DynamicPartitionsDefinition(name=f"{name}_regions")
    source_key = dg.AssetKey([name, "landcover_source"])
    samples_key = dg.AssetKey([name, "landcover_samples"])
    model_key = dg.AssetKey([name, "embedding_model"])
    embeddings_key = dg.AssetKey([name, "cell_embeddings"])
    # Assets partitioned by region share their partitions, backfill batching and group.
    regional_asset = functools.partial(
        dg.asset, partitions_def=regions_partitions, group_name=group,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN),
        retry_policy=TRANSIENT_RETRY,
    )

    @dg.observable_source_asset(key=source_key, group_name=group,
                                description=f"Categorical raster source {settings.source_description}")
    def landcover_source(raster_reader: RasterReader, storage: ProductStorage) -> dg.ObserveResult:
        files = raster_reader.source_files(settings, storage.known_source_versions(name))
        if not files:
            raise dg.Failure(f"landing location {settings.landing!r} holds no file matching {settings.landing_pattern!r}")
        newest = newest_first(files)[0]
        info = raster_reader.describe(newest.location, settings.nodata)
        return dg.ObserveResult(
            data_version=dg.DataVersion(manifest_version(files)),
            metadata={
                "location": settings.landing or newest.location,
                "files": len(files),
                "newest_file": newest.name,
                "crs": info.crs.to_string(),
                "size": f"{info.width} x {info.height}",
                "nodata": str(info.nodata),
                "lonlat_bounds": str([round(v, 5) for v in info.lonlat_bounds()]),
            },
        )

    @dg.asset(
        key=dg.AssetKey([name, "h3_regions"]),
        deps=[source_key],
        group_name=group,
        retry_policy=TRANSIENT_RETRY,
        code_version="2",
        kinds={"h3", "python"},
        pool=f"{name}_stencil",  # one stencil at a time: each compares itself with the previous one
    )
    @fails_clearly
    def h3_regions(context: dg.AssetExecutionContext, raster_reader: RasterReader, storage: ProductStorage):
        """The H3 stencil: coarse regions holding valid, non-background data in any source file. Each
        becomes a partition of the samples and embeddings; the embedding Zarr store is laid out (or
        migrated) for them. Files whose content is unchanged keep their previous scan; the regions the
        new, changed or removed files cover are listed as ``changed_regions`` (what needs a refresh)."""
        path = storage.stencil_path(name)
        previous = storage.read_json(path, "the stencil") if path.exists() else None
        current_settings = settings.model_dump(mode="json")
        comparable = previous if previous and previous.get("settings") == current_settings and "sources" in previous else None
        old_files = (comparable or {}).get("sources", {})
        files = newest_first(raster_reader.source_files(settings, storage.known_source_versions(name)))
        if not files:
            raise dg.Failure(f"landing location {settings.landing!r} holds no file matching {settings.landing_pattern!r}")
        if comparable:
            legend = _legend(comparable)
        else:
            legend = product_legend(settings, raster_reader.describe(files[0].location, settings.nodata))
        scanned: list[FileStencil] = []
        for f in files:
            old = old_files.get(f.name)
            if old and old["version"] == f.version and not old.get("error"):
                scanned.append(FileStencil(**{**old, "location": f.location, "fingerprint": f.fingerprint,
                                              "modified_ns": f.modified_ns}))
                continue
            try:
                info = raster_reader.describe(f.location, settings.nodata)
                with raster_reader.open(f.location) as src:
                    stencil = scan_regions(src, info, legend, settings, progress=lambda i, n, k: context.log.info(
                        f"stencil {f.name}: {i}/{n} candidate regions, {k} with data"))
            except (RasterInputError, rasterio.errors.RasterioIOError) as exc:
                if settings.landing is None:
                    raise
                context.log.warning(f"landing file {f.name!r} is not used: {exc}")
                scanned.append(FileStencil(f.name, f.location, f.version, f.fingerprint, f.modified_ns, [], [], {},
                                           {}, error=str(exc)))
                continue
            scanned.append(FileStencil(f.name, f.location, f.version, f.fingerprint, f.modified_ns,
                                       [region_key(int(r)) for r in stencil.regions], stencil.covered,
                                       stencil.cells_per_region, stencil.status_counts))
        mosaic = merge_stencils(scanned, comparable)
        rejected = {f.name: f.error for f in scanned if f.error}
        if not any(mosaic.region_sources.values()):
            raise dg.Failure(f"no source file of {name!r} covers an H3 cell with data; rejected files: {rejected}")
        existing = set(context.instance.get_dynamic_partitions(regions_partitions.name))
        new_keys = [k for k in mosaic.regions if k not in existing]
        if new_keys:
            context.instance.add_dynamic_partitions(regions_partitions.name, new_keys)
        regions = np.array([int(k, 16) for k in mosaic.regions], dtype=np.uint64)
        layout = ProductLayout.build(regions, settings.resolution, settings.region_res)
        storage.ensure_product_store(name, layout, settings.embedding_dim, {
            "product": name, "raster": settings.source_description,
            "description": f"H3 land-cover embeddings of {settings.source_description}",
            "window_size": settings.window_size, "legend": json.dumps({str(v): n for v, n in zip(legend.values.tolist(), legend.names)}),
        })
        source_version = manifest_version(files)
        state = {
            "settings": current_settings,
            "source_version": source_version,
            "legend": {str(v): n for v, n in zip(legend.values.tolist(), legend.names)},
            "regions": mosaic.regions,
            "cells_per_region": mosaic.cells_per_region,
            "region_sources": mosaic.region_sources,
            "sources": {f.name: f.to_json() for f in scanned},
        }
        storage.write_json(path, state)
        for label, names in (("added", mosaic.added), ("changed", mosaic.changed), ("removed", mosaic.removed)):
            if names and comparable:
                context.log.info(f"source files {label}: {names[:20]}{' ...' if len(names) > 20 else ''}")
        if mosaic.orphaned_regions:
            context.log.warning(f"{len(mosaic.orphaned_regions)} regions are no longer covered by any source file "
                                f"(removed: {mosaic.removed}); their previous rows are kept: {mosaic.orphaned_regions[:20]}")
        return dg.MaterializeResult(
            metadata={
                "regions": len(mosaic.regions),
                "new_partitions": len(new_keys),
                "cells": int(sum(mosaic.cells_per_region.values())),
                "changed_regions": dg.MetadataValue.json(mosaic.changed_regions),
                "changed_region_count": len(mosaic.changed_regions),
                "orphaned_regions": dg.MetadataValue.json(mosaic.orphaned_regions),
                "source_files": len(files),
                "files_added": dg.MetadataValue.json(mosaic.added),
                "files_changed": dg.MetadataValue.json(mosaic.changed),
                "files_removed": dg.MetadataValue.json(mosaic.removed),
                "files_rejected": dg.MetadataValue.json(rejected),
                "cell_status": dg.MetadataValue.json(mosaic.status_counts),
                "source_version": source_version,
                "legend_classes": legend.n_classes,
                "stencil": dg.MetadataValue.path(str(path)),
                "trigger": context.run.tags.get(LANDING_TAG, ""),
            }
        )

    @regional_asset(
        key=samples_key,
        deps=[source_key, dg.AssetKey([name, "h3_regions"])],
        code_version="2",
        kinds={"zarr"},
    )
    @fails_clearly
    def landcover_samples(context: dg.AssetExecutionContext, raster_reader: RasterReader, storage: ProductStorage):
        """Per region: a window of class ids centred on every fine cell (raster CRS and pixels; where
        source files overlap, the newest), per-class fractions, a status per cell (edge, nodata, unknown
        class cells kept with a reason) and the content version of the file each cell was read from. Zarr."""
        start = time.perf_counter()  # compute_seconds: time in our code (benchmarks subtract it from run time)
        state = _stencil_state(storage, name)
        keys = _checked_keys(context, settings, state)
        legend = _legend(state)
        files = state["sources"]
        landed = {f.name: f.fingerprint for f in raster_reader.list_files(settings)}
        status_total = np.zeros(len(STATUSES), dtype=np.int64)
        done = 0
        with contextlib.ExitStack() as stack:
            opened: dict[str, tuple[RasterBlocks, RasterInfo]] = {}

            def raster(file_name: str) -> tuple[RasterBlocks, RasterInfo]:
                if file_name not in opened:
                    entry = files[file_name]
                    if landed.get(file_name) != entry["fingerprint"]:
                        raise dg.Failure(
                            f"source file {entry['location']!r} was {'removed' if file_name not in landed else 'changed'} "
                            f"after the stencil was made; re-materialize h3_regions first (the landing sensor does)")
                    info = raster_reader.describe(entry["location"], settings.nodata)
                    opened[file_name] = (RasterBlocks(stack.enter_context(raster_reader.open(entry["location"]))), info)
                return opened[file_name]

            for i, key in enumerate(keys):
                names = state["region_sources"].get(key) or []
                if not names:
                    raise dg.Failure(f"region {key} is no longer covered by any source file; its previous rows "
                                     "are kept. Land a file that covers it, or leave this partition as it is")
                cells = region_cells(parse_region_key(key, settings.region_res), settings.resolution)
                lat, lon = cell_centres(cells)
                samples, source_index = sample_mosaic([raster(n) for n in names], legend, cells, lat, lon,
                                                      settings.window_size, settings.min_valid_fraction,
                                                      settings.unknown_classes == "flag")
                if len(samples.unknown_values) and settings.unknown_classes == "error":
                    raise RasterInputError(
                        f"raster {files[names[0]]['location']!r}: region {key} holds values "
                        f"{samples.unknown_values.tolist()} that are not in the legend; nothing was written for this region"
                    )
                versions = [files[n]["version"] for n in names]
                ds = samples_dataset(samples, legend, settings.resolution, {
                    "product": name, "region": key, "source_version": combined_version(versions),
                    "source_files": json.dumps(names), "raster": settings.source_description,
                    "window_size": settings.window_size,
                }, source_versions=[versions[j] for j in source_index])
                storage.write_samples(name, key, ds)
                status_total += np.bincount(samples.status, minlength=len(STATUSES))
                done += len(cells)
                rate = done / max(time.perf_counter() - start, 1e-9)
                context.log.info(f"samples: region {key} ({i + 1}/{len(keys)}), {done:,} cells, {rate:,.0f} cells/s")
        return dg.MaterializeResult(
            metadata={
                "regions": len(keys),
                "cells": done,
                "cell_status": dg.MetadataValue.json({s: int(n) for s, n in zip(STATUSES, status_total)}),
                "cells_per_second": round(done / max(time.perf_counter() - start, 1e-9), 1),
                "compute_seconds": round(time.perf_counter() - start, 3),
                "source_version": state["source_version"],
            }
        )

    @dg.asset(
        key=model_key,
        deps=[samples_key],
        group_name=group,
        retry_policy=TRANSIENT_RETRY,
        code_version="1",
        kinds={"pytorch"},
        check_specs=[dg.AssetCheckSpec(
            "beats_untrained_baseline", asset=model_key,
            description="Held-out kNN balanced accuracy of the trained model exceeds the same network untrained.",
        )],
    )
    @fails_clearly
    def embedding_model(context: dg.AssetExecutionContext, config: TrainingConfig, storage: ProductStorage):
        """Self-supervised CNN trained with a triplet loss (anchor; positive = a nearby cell; negative =
        a cell of another region) on samples from many regions. L2-normalised output. Saved with its
        hyper-parameters, loss curve, held-out quality, content-hash version and a TorchScript export."""
        import torch

        state = _stencil_state(storage, name)
        split = split_regions(np.array([int(k, 16) for k in state["regions"]], dtype=np.uint64),
                              config.held_out_fraction, config.seed)
        data = _load_training_samples(storage, name, state, split, config)
        context.log.info(
            f"training on {len(data.train_rows):,} cells of {len(split.train)} regions; "
            f"{len(data.eval_test):,} held-out cells of {len(split.held_out)} regions"
        )
        spec = encoder.EncoderSpec(n_tokens=len(state["legend"]) + 1, window_size=settings.window_size,
                                   embedding_dim=settings.embedding_dim)
        untrained = encoder.build_encoder(spec, config.seed)
        model = encoder.build_encoder(spec, config.seed)
        sampler = encoder.TripletSampler(data.cells[data.train_rows], data.regions[data.train_rows],
                                         config.positive_rings, config.seed)
        result = encoder.train_triplet(
            model, data.windows[data.train_rows], sampler, config.steps, config.batch_size, config.learning_rate,
            config.margin, config.seed,
            progress=lambda step, loss: context.log.info(f"training: step {step}/{config.steps}, loss {loss:.4f}"),
        )
        version = encoder.model_version(model)
        quality = _quality(data, model, untrained, settings.embedding_dim)
        context.log.info(f"model {version}: held-out kNN balanced accuracy {quality}")
        hyper = {**config.model_dump(), **json.loads(spec.to_json())}
        metrics = {
            "model_version": version, "product": name, "source_version": state["source_version"],
            "hyper_parameters": hyper, "losses": result.losses, "training_seconds": result.seconds,
            "train_cells": int(len(data.train_rows)), "train_regions": len(split.train),
            "held_out_regions": [region_key(int(r)) for r in split.held_out], "quality_knn5_balanced_accuracy": quality,
            "macs_per_cell": encoder.flops_per_cell(spec), "torch": torch.__version__,
        }
        folder = storage.model_dir(name, version)
        storage.write_bytes(folder / "checkpoint.pt", encoder.save_checkpoint(model, {"metrics": metrics}))
        storage.write_bytes(folder / "encoder.torchscript.pt", encoder.export_torchscript(model))
        loss_png = loss_curve_png(result.losses, f"{name}: triplet loss, model {version}")
        storage.write_bytes(folder / "loss_curve.png", loss_png)
        storage.write_json(folder / "metrics.json", metrics)
        storage.write_json(storage.current_model_path(name), {"model_version": version, "folder": str(folder)})
        beats = bool(quality["trained"] > quality["untrained"])
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            check_results=[dg.AssetCheckResult(
                check_name="beats_untrained_baseline", passed=beats, severity=dg.AssetCheckSeverity.WARN,
                metadata={"trained": quality["trained"], "untrained": quality["untrained"],
                          "held_out_regions": len(split.held_out)},
            )],
            metadata={
                "model_version": version,
                "source_version": state["source_version"],
                "hyper_parameters": dg.MetadataValue.json(hyper),
                "quality_knn5_balanced_accuracy": dg.MetadataValue.md(_quality_table(quality)),
                "trained_beats_untrained": beats,
                "final_loss": float(np.mean(result.losses[-max(1, len(result.losses) // 20):])),
                "loss_curve": dg.MetadataValue.md(markdown_image(loss_png, "triplet loss")),
                "training_seconds": round(result.seconds, 1),
                "train_cells": int(len(data.train_rows)),
                "checkpoint": dg.MetadataValue.path(str(folder / "checkpoint.pt")),
                "torchscript": dg.MetadataValue.path(str(folder / "encoder.torchscript.pt")),
            },
        )

    embedding_checks = [
        dg.AssetCheckSpec("every_valid_cell_embedded", asset=embeddings_key,
                          description="Every cell whose window has enough valid pixels has an embedding."),
        dg.AssetCheckSpec("no_nan", asset=embeddings_key, description="No embedded cell has a NaN component."),
        dg.AssetCheckSpec("unit_norm", asset=embeddings_key, description="Every embedding has norm 1 (+-1e-3)."),
    ]

    @regional_asset(
        key=embeddings_key,
        automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES,
        deps=[samples_key, model_key],
        pool="gpu",
        op_tags={"dagster-k8s/config": GPU_STEP_K8S_CONFIG},
        code_version="1",
        kinds={"pytorch", "zarr"},
        check_specs=embedding_checks,
    )
    @fails_clearly
    def cell_embeddings(context: dg.AssetExecutionContext, inference_device: InferenceDevice, storage: ProductStorage):
        """Per region: the model's embedding of every valid cell, written to the product's H3-indexed
        Zarr store (one store for the product; xarray opens it in one call, xdggs decodes it), with the
        model version and source data version of each row."""
        state = _stencil_state(storage, name)
        keys = _checked_keys(context, settings, state)
        current = storage.read_json(storage.current_model_path(name), f"the embedding model of {name!r}")
        folder = storage.model_dir(name, current["model_version"])
        model, extra = encoder.load_checkpoint((folder / "checkpoint.pt").read_bytes())
        version = current["model_version"]
        layout = _layout(state, settings)
        device = inference_device.describe()
        missing = nan = off_norm = 0
        start, done, embedded_total = time.perf_counter(), 0, 0
        sources_seen: set[str] = set()
        for i, key in enumerate(keys):
            samples = storage.open_samples(name, key).load()
            status = samples["status"].values
            embedded = np.isin(status, EMBEDDED)
            vectors = np.full((len(status), settings.embedding_dim), np.nan, dtype=np.float32)
            if embedded.any():
                vectors[embedded] = inference_device.embed(model, samples["windows"].values[embedded])
            norms = np.linalg.norm(vectors[embedded], axis=1)
            missing += int(np.isnan(vectors[embedded]).all(axis=1).sum())
            nan += int(np.isnan(vectors[embedded]).any(axis=1).sum())
            off_norm += int((np.abs(norms - 1) > 1e-3).sum())
            row_sources = _row_source_versions(samples)
            storage.write_product_region(name, layout, parse_region_key(key, settings.region_res), embedding=vectors,
                                         status=status, model_version=version,
                                         source_version=row_sources)
            sources_seen.update(decode_version(v) for v in np.unique(row_sources))
            done += len(status)
            embedded_total += int(embedded.sum())
            rate = embedded_total / max(time.perf_counter() - start, 1e-9)
            context.log.info(f"embeddings: region {key} ({i + 1}/{len(keys)}), {done:,} cells, {rate:,.0f} cells/s on {device}")
        return dg.MaterializeResult(
            metadata={
                "model_version": version,
                "source_version": ", ".join(sorted(sources_seen)),
                "regions": len(keys),
                "cells": done,
                "embedded_cells": embedded_total,
                "cells_per_second": round(embedded_total / max(time.perf_counter() - start, 1e-9), 1),
                "device": device,
                "store": dg.MetadataValue.path(str(storage.embeddings_path(name))),
            },
            check_results=[
                dg.AssetCheckResult(check_name="every_valid_cell_embedded", passed=missing == 0,
                                    metadata={"valid_cells_without_embedding": missing}),
                dg.AssetCheckResult(check_name="no_nan", passed=nan == 0, metadata={"cells_with_nan": nan}),
                dg.AssetCheckResult(check_name="unit_norm", passed=off_norm == 0,
                                    metadata={"cells_off_unit_norm": off_norm}),
            ],
        )

    @dg.asset(
        key=dg.AssetKey([name, "embedding_map"]),
        automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES,
        deps=[embeddings_key],
        group_name=group,
        retry_policy=TRANSIENT_RETRY,
        code_version="1",
        kinds={"matplotlib"},
    )
    @fails_clearly
    def embedding_map(context: dg.AssetExecutionContext, storage: ProductStorage, dask_cluster: DaskCluster):
        """The embeddings of every materialized cell projected to 3 principal components, drawn as an RGB map.
        The PCA runs chunk-parallel on the Dask cluster, straight from the store's chunks."""
        ds = storage.open_product(name, chunks={})  # dask arrays, one task per Zarr chunk
        status = ds["status"].values
        rows = np.nonzero(np.isin(status, EMBEDDED))[0]
        cells = ds["cell_ids"].values[rows]
        versions = sorted(decode_version(v) for v in np.unique(ds["model_version"].values[rows]))
        with dask_cluster.client() as client:
            workers = len(client.scheduler_info()["workers"])
            start = time.perf_counter()
            colours = principal_rgb(ds["embedding"].data[rows])
            pca_seconds = time.perf_counter() - start
        png = embedding_map_png(cells, colours, f"{name}: {len(cells):,} cells, PCA of embeddings as RGB "
                                                f"(model {', '.join(versions)})")
        path = storage.picture_path(name, "embedding_map.png")
        storage.write_bytes(path, png)
        return dg.MaterializeResult(
            metadata={
                "map": dg.MetadataValue.md(markdown_image(png, "embedding map")),
                "cells": int(len(cells)),
                "model_versions": ", ".join(versions),
                "pca": f"{pca_seconds:.2f} s on {workers} Dask workers ({dask_cluster.scheduler_address or 'local cluster'})",
                "path": dg.MetadataValue.path(str(path)),
            }
        )

    table_key = dg.AssetKey([name, "embedding_table"])

    @regional_asset(
        key=table_key,
        automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES,
        deps=[embeddings_key],
        code_version="1",
        kinds={"postgres"},
    )
    @fails_clearly
    def embedding_table(context: dg.AssetExecutionContext, storage: ProductStorage, database: PostgresDatabase):
        """Per region: the embedded cells loaded into PostgreSQL (pgvector), one table per model version
        (geoembed."<product>_<model version>"). A load replaces exactly the region's rows in one
        transaction (DELETE + binary COPY): re-runs never duplicate, failures keep the previous rows."""
        state = _stencil_state(storage, name)
        keys = _checked_keys(context, settings, state)
        layout = _layout(state, settings)
        ds = storage.open_product(name)
        loaded, seconds, tables = 0, 0.0, set()
        with database.connect() as conn:
            for i, key in enumerate(keys):
                region = parse_region_key(key, settings.region_res)
                part = ds.isel(cells=layout.rows_of(region))
                status = part["status"].values
                keep = np.isin(status, EMBEDDED)
                if (status == NOT_COMPUTED).all():
                    raise dg.Failure(f"region {key} has no embeddings yet; materialize cell_embeddings first")
                if not keep.any():  # no cell of this region has enough valid data: nothing to serve
                    context.log.info(f"table: region {key} has no embedded cells; skipped")
                    continue
                cells = part["cell_ids"].values[keep]
                versions = {decode_version(v) for v in np.unique(part["model_version"].values[keep])}
                if len(versions) != 1:
                    raise dg.Failure(f"region {key} mixes model versions {sorted(versions)}; re-run cell_embeddings")
                version = versions.pop()
                table = db.ensure_embedding_table(conn, name, version, settings.embedding_dim, settings.resolution)
                tables.add(table)
                lat, lon = cell_centres(cells)
                sources = [decode_version(v) for v in part["source_version"].values[keep]]
                rows = db.RegionRows(region, cells, lon, lat, part["embedding"].values[keep], version, sources)
                seconds += db.replace_region(conn, table, rows)
                loaded += len(cells)
                context.log.info(f"table: region {key} ({i + 1}/{len(keys)}), {loaded:,} rows, "
                                 f"{loaded / max(seconds, 1e-9):,.0f} rows/s into {db.SCHEMA}.{table}")
        return dg.MaterializeResult(metadata={
            "rows": loaded, "regions": len(keys), "tables": ", ".join(sorted(tables)),
            "rows_per_second": round(loaded / max(seconds, 1e-9), 1), "database": redacted(database.resolved_dsn()),
        })

    @dg.asset(
        key=dg.AssetKey([name, "embedding_index"]),
        automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES,
        deps=[table_key],
        group_name=group,
        retry_policy=TRANSIENT_RETRY,
        code_version="1",
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(
            "ann_recall_at_10", asset=dg.AssetKey([name, "embedding_index"]),
            description="Recall@10 of the HNSW index against exact search on random query cells is at least 0.95.",
        )],
    )
    @fails_clearly
    def embedding_index(context: dg.AssetExecutionContext, storage: ProductStorage, database: PostgresDatabase):
        """The cosine HNSW index of the current model's table, built once after the bulk load (later
        partition loads update it in place), with its recall measured against exact search."""
        current = storage.read_json(storage.current_model_path(name), f"the embedding model of {name!r}")
        with database.connect() as conn:
            found = db.latest_model_table(conn, name, current["model_version"])
            table, version = found.table, found.model_version
            start = time.perf_counter()
            built = db.build_hnsw_index(conn, table)
            build_seconds = time.perf_counter() - start
            rows = db.count_rows(conn, table)
            recall = db.recall_at_k(conn, table, n_queries=100, k=10)
        context.log.info(f"index on {table}: {rows:,} rows, recall@10 {recall:.3f}")
        return dg.MaterializeResult(
            metadata={"table": f"{db.SCHEMA}.{table}", "model_version": version, "rows": rows,
                      "built_now": built, "build_seconds": round(build_seconds, 2), "recall_at_10": round(recall, 4)},
            check_results=[dg.AssetCheckResult(check_name="ann_recall_at_10", passed=recall >= 0.95,
                                               metadata={"recall_at_10": round(recall, 4), "queries": 100})],
        )

    observe_job = dg.define_asset_job(f"{name}_observe_source", selection=dg.AssetSelection.assets(source_key))
    sensors = [build_landing_sensor(settings, regions_partitions, PARTITIONS_PER_RUN)] if settings.landing else []
    definitions = dg.Definitions(
        assets=[landcover_source, h3_regions, landcover_samples, embedding_model, cell_embeddings, embedding_map,
                embedding_table, embedding_index],
        jobs=[observe_job],
        sensors=sensors,
    )
    return ProductAssets(settings, regions_partitions, definitions, source_key)


def _row_source_versions(samples) -> np.ndarray:
    """Per cell, the encoded version of the source file it was read from (older samples: one per region)."""
    if "source_version" in samples:
        return samples["source_version"].values
    return np.full(samples.sizes["cells"], encode_version(samples.attrs["source_version"]), dtype=np.uint64)


@dataclass
class TrainingSamples:
    cells: np.ndarray
    regions: np.ndarray
    windows: np.ndarray
    fractions: np.ndarray
    dominant: np.ndarray
    train_rows: np.ndarray
    eval_train: np.ndarray
    eval_test: np.ndarray


def _load_training_samples(storage: ProductStorage, name: str, state: dict, split, config: TrainingConfig) -> TrainingSamples:
    """Embeddable cells of every materialized region, with row subsets for training and evaluation."""
    parts = {"cells": [], "regions": [], "windows": [], "fractions": [], "dominant": []}
    missing = []
    for key in state["regions"]:
        path = storage.samples_path(name, key)
        if not path.exists():
            missing.append(key)
            continue
        ds = storage.open_samples(name, key)
        keep = np.isin(ds["status"].values, EMBEDDED)
        parts["cells"].append(ds["cell_ids"].values[keep])
        parts["regions"].append(np.full(int(keep.sum()), int(key, 16), dtype=np.uint64))
        parts["windows"].append(ds["windows"].values[keep])
        parts["fractions"].append(ds["fractions"].values[keep])
        parts["dominant"].append(ds["dominant_class"].values[keep])
    if not parts["cells"]:
        raise dg.Failure(f"no land-cover samples of product {name!r} are materialized; materialize landcover_samples first")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    rng = np.random.default_rng(config.seed)
    in_train = np.isin(data["regions"], split.train)
    train_pool = np.nonzero(in_train)[0]
    test_pool = np.nonzero(~in_train)[0]
    if len(test_pool) == 0:  # a single region: evaluate on training regions (reported as such)
        test_pool = train_pool

    def pick(pool: np.ndarray, n: int) -> np.ndarray:
        return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))

    return TrainingSamples(**data, train_rows=pick(train_pool, config.max_train_cells),
                           eval_train=pick(train_pool, config.max_eval_cells),
                           eval_test=pick(test_pool, config.max_eval_cells))


def _quality(data: TrainingSamples, model, untrained, dim: int) -> dict[str, float]:
    import torch

    device = torch.device("cpu")
    tr, te = data.eval_train, data.eval_test
    y_tr, y_te = data.dominant[tr], data.dominant[te]
    scores = {}
    for label, net in (("trained", model), ("untrained", untrained)):
        scores[label] = knn_balanced_accuracy(encoder.embed(net, data.windows[tr], device, 4096, False), y_tr,
                                              encoder.embed(net, data.windows[te], device, 4096, False), y_te)
    p_tr, p_te = pca_features(data.fractions[tr], data.fractions[te], dim)
    scores["pca_of_class_fractions"] = knn_balanced_accuracy(p_tr, y_tr, p_te, y_te)
    return {k: round(v, 4) for k, v in scores.items()}


def _quality_table(quality: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in quality.items())
    return "kNN (k=5) balanced accuracy of the dominant class on held-out regions\n\n| features | score |\n|---|---|\n" + rows
