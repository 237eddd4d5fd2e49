"""The asset graph of one station-ranking product ([station] = partitioned by station folder):

    station_source (observable) -> station_catalog (registers stations, lists the changed ones)
    station_catalog -> ranking_dataset [station] -> ranking_model [station] -> ranking_predictions [station]
                                                                            -> ranking_report [station]
    (a station sensor refreshes the catalog, then the four assets of each new or changed station)

Bodies say what they make from what and call ``geoembed.ranking`` for the logic; every read or write of
outputs and tables goes through a resource. One station's bad input fails that station's run only.
"""

import json
from dataclasses import asdict, dataclass

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from geoembed.core.progress import Progress
from geoembed.core.render import markdown_image
from geoembed.core.sources import manifest_version, with_versions
from geoembed.ranking import tables
from geoembed.ranking.catalog import build_station_catalog
from geoembed.ranking.dataset import build_dataset
from geoembed.ranking.model import (
    load_images, load_ranker, mean_brightness, new_ranker, save_ranker, score, train_ranker,
)
from geoembed.ranking.report import ReportInputs, loss_curves_png, render_report, tau_table
from geoembed.ranking.settings import RankingProductSettings
from geoembed.ranking.stations import read_station, station_folder
from geoembed_assets.core.timing import timed_asset
from geoembed_assets.core.failures import TRANSIENT_RETRY, fails_clearly
from geoembed_assets.core.landing import LANDING_TAG
from geoembed_assets.core.policies import GPU_STEP
from geoembed_assets.ranking.partitions import RankingKeys, station_partitions
from geoembed_assets.ranking.sensors import build_station_sensor
from geoembed_assets.ranking.state import (
    known_station_files, layout_of, read_station_catalog, station_files, stations_dir,
)
from geoembed_resources import InferenceDevice, PostgresDatabase, ProductStorage, RasterReader
from geoembed_resources.postgres import redacted

IMAGES_PER_BATCH = 1024  # images decoded at once for inference: memory stays flat however many a station has


@dataclass(frozen=True)
class RankingAssets:
    settings: RankingProductSettings
    keys: RankingKeys
    partitions: dg.DynamicPartitionsDefinition
    definitions: dg.Definitions


def build_ranking_product(settings: RankingProductSettings) -> RankingAssets:
    """Every asset, job and sensor of one ranking product."""
    keys = RankingKeys(settings.name)
    partitions = station_partitions(settings.name)
    per_station = timed_asset(partitions_def=partitions, group_name=settings.name, retry_policy=TRANSIENT_RETRY)
    assets = [source_asset(settings, keys), catalog_asset(settings, keys, partitions),
              dataset_asset(settings, keys, per_station), model_asset(settings, keys, per_station),
              predictions_asset(settings, keys, per_station), report_asset(settings, keys, per_station)]
    definitions = dg.Definitions(
        assets=assets, jobs=[dg.define_asset_job(keys.observe_job, selection=dg.AssetSelection.assets(keys.source))],
        sensors=[build_station_sensor(settings, keys)])
    return RankingAssets(settings, keys, partitions, definitions)


def source_asset(settings: RankingProductSettings, keys: RankingKeys) -> dg.SourceAsset:
    @dg.observable_source_asset(key=keys.source, group_name=settings.name,
                                description=f"Station folders (FPE layout) in {settings.stations}")
    def station_source(raster_reader: RasterReader, storage: ProductStorage) -> dg.ObserveResult:
        files = with_versions(station_files(raster_reader, settings), known_station_files(storage, settings))
        return dg.ObserveResult(data_version=dg.DataVersion(manifest_version(files)),
                                metadata={"location": settings.stations, "files": len(files)})

    return station_source


def catalog_asset(settings: RankingProductSettings, keys: RankingKeys,
                  partitions: dg.DynamicPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(key=keys.catalog, deps=[keys.source], group_name=settings.name, code_version="1", kinds={"json"},
              retry_policy=TRANSIENT_RETRY, pool=f"{settings.name}_catalog")
    @fails_clearly
    def station_catalog(context: dg.AssetExecutionContext, raster_reader: RasterReader, storage: ProductStorage):
        """Every station folder (holding db/station.json) with the content version of each of its files:
        new stations become partitions; stations whose files changed are listed for a refresh."""
        previous = read_station_catalog(storage, settings)
        files = with_versions(station_files(raster_reader, settings), previous.files if previous else {})
        catalog = build_station_catalog(files)
        new = sorted(set(catalog.stations) - set(context.instance.get_dynamic_partitions(partitions.name)))
        if new:
            context.instance.add_dynamic_partitions(partitions.name, new)
        changed = catalog.changed_since(previous)
        storage.write_json(layout_of(storage, settings).catalog, catalog.model_dump(mode="json"))
        return dg.MaterializeResult(metadata={
            "stations": dg.MetadataValue.json(sorted(catalog.stations)), "new_stations": dg.MetadataValue.json(new),
            "changed_stations": dg.MetadataValue.json(changed), "files": len(catalog.files),
            "rejected": dg.MetadataValue.json(catalog.rejected), "location": stations_dir(settings),
            "trigger": context.run.tags.get(LANDING_TAG, ""),
        })

    return station_catalog


def _frame(storage: ProductStorage, path) -> pd.DataFrame:
    return storage.read_table(path).to_pandas()


def station_root(raster_reader: RasterReader, storage: ProductStorage, settings: RankingProductSettings,
                 station: str) -> str:
    """The local root holding ``station``'s folder: the stations location, or for an s3:// prefix a mirror
    of that station's objects in the product's working folder (each step brings its own copy up to date,
    so steps in separate pods work too)."""
    if not settings.stations.startswith("s3://"):
        return settings.stations
    mirror = storage.work_path(settings.name, "station_mirror")
    raster_reader.mirror(f"{stations_dir(settings).rstrip('/')}/{station}/", mirror / "stations" / station)
    return str(mirror)


def dataset_asset(settings: RankingProductSettings, keys: RankingKeys, per_station) -> dg.AssetsDefinition:
    @per_station(key=keys.dataset, deps=[keys.catalog], code_version="1", kinds={"parquet"})
    @fails_clearly
    def ranking_dataset(context: dg.AssetExecutionContext, storage: ProductStorage, raster_reader: RasterReader):
        """One station's images (with the observed value interpolated to each, whether the hour and month
        filters keep it, and the split it is measured in) and its annotated pairs, split into train and
        validation by connected components of the image-pair graph (rank-input.R). Fails, naming the station
        and the file, on malformed JSON, unknown images or too few pairs."""
        station = context.partition_key
        layout = layout_of(storage, settings)
        data = read_station(station_root(raster_reader, storage, settings, station), station, settings.variable, settings.annotations_variable,
                            settings.max_gap_minutes)
        dataset = build_dataset(data, settings.filters, settings.training.train_share, settings.training.seed)
        storage.write_table(layout.images(station), pa.Table.from_pandas(dataset.images, preserve_index=False))
        storage.write_table(layout.pairs(station), pa.Table.from_pandas(dataset.pairs, preserve_index=False))
        summary = {"station": asdict(dataset.station), "version": dataset.version, "split_method": dataset.split_method,
                   "counts": dataset.counts, "series_points": data.series_points, "variable": settings.variable,
                   "filters": settings.filters.model_dump()}
        storage.write_json(layout.dataset_summary(station), summary)
        return dg.MaterializeResult(data_version=dg.DataVersion(dataset.version), metadata={
            **dataset.counts, "split_method": dataset.split_method, "dataset_version": dataset.version,
            "station_name": dataset.station.name, "images": dg.MetadataValue.path(str(layout.images(station))),
        })

    return ranking_dataset


def model_asset(settings: RankingProductSettings, keys: RankingKeys, per_station) -> dg.AssetsDefinition:
    config = settings.training

    @per_station(key=keys.model, deps=[keys.dataset], code_version="1", kinds={"pytorch"}, **GPU_STEP)
    @fails_clearly
    def ranking_model(context: dg.AssetExecutionContext, storage: ProductStorage, inference_device: InferenceDevice,
                      raster_reader: RasterReader):
        """One station's ranking model: our CNN trunk and an MLP head, one score per image, trained on the
        training pairs with the RankNet (or margin) loss, the trunk frozen for the first epochs; the epoch with
        the lowest validation loss kept, versioned by content hash with its image size and normalisation."""
        station = context.partition_key
        layout = layout_of(storage, settings)
        images = _frame(storage, layout.images(station))
        pairs = _frame(storage, layout.pairs(station))
        summary = storage.read_json(layout.dataset_summary(station), f"the dataset of station {station}")
        annotated = images[images["image_id"].isin(set(pairs["left_id"]) | set(pairs["right_id"]))].reset_index(drop=True)
        index = {image: i for i, image in enumerate(annotated["image_id"])}
        folder = station_folder(station_root(raster_reader, storage, settings, station), station)
        pixels = load_images(list(annotated["path"]), config.image_size, station, folder)
        trained = train_ranker(pixels, pairs["left_id"].map(index).to_numpy(), pairs["right_id"].map(index).to_numpy(),
                               pairs["label"].to_numpy(np.int64), (pairs["split"] == "train").to_numpy(), config,
                               log=context.log.info, device=inference_device.torch_device())
        epochs = [asdict(e) for e in trained.epochs]
        lineage = {"dataset_version": summary["version"], "model_code": settings.model_code,
                   "training": config.model_dump(), "best_epoch": trained.best_epoch, "epochs": epochs}
        storage.write_bytes(layout.model(station, trained.version), save_ranker(trained.model, {"lineage_json": json.dumps(lineage)}))
        storage.write_json(layout.current_model(station), {"model_version": trained.version, **lineage})
        best = trained.epochs[trained.best_epoch]
        rows = "\n".join(f"| {e.epoch + 1} | {e.train_loss:.4f} | {e.validation_loss:.4f} | "
                         f"{e.validation_pair_accuracy:.3f} | {'yes' if e.backbone_frozen else ''} |" for e in trained.epochs)
        return dg.MaterializeResult(data_version=dg.DataVersion(trained.version), metadata={
            "model_version": trained.version, "dataset_version": summary["version"], "model_code": settings.model_code,
            "best_epoch": trained.best_epoch + 1, "validation_loss": round(best.validation_loss, 4),
            "validation_pair_accuracy": round(best.validation_pair_accuracy, 4),
            "training_seconds": round(trained.seconds, 1), "annotated_images": len(annotated),
            "epochs": dg.MetadataValue.md("| epoch | train loss | validation loss | pair accuracy | trunk frozen |\n"
                                          "|---|---|---|---|---|\n" + rows),
            "loss_curve": dg.MetadataValue.md(markdown_image(loss_curves_png(epochs), "loss curves")),
            "model": dg.MetadataValue.path(str(layout.model(station, trained.version))),
        })

    return ranking_model


def predictions_asset(settings: RankingProductSettings, keys: RankingKeys, per_station) -> dg.AssetsDefinition:
    @per_station(key=keys.predictions, deps=[keys.model], code_version="1", kinds={"pytorch", "parquet", "postgres"},
                 **GPU_STEP)
    @fails_clearly
    def ranking_predictions(context: dg.AssetExecutionContext, storage: ProductStorage, raster_reader: RasterReader,
                            inference_device: InferenceDevice, database: PostgresDatabase):
        """Every image of the station scored by its current model, in batches, merged into one predictions
        table (Parquet, and PostgreSQL rows replacing the station-model's earlier ones), with the untrained
        model's score and mean brightness beside it (the report's baselines)."""
        station = context.partition_key
        layout = layout_of(storage, settings)
        images = _frame(storage, layout.images(station))
        current = storage.read_json(layout.current_model(station), f"the ranking model of station {station}")
        model, _ = load_ranker(layout.model(station, current["model_version"]).read_bytes())
        untrained = new_ranker(model.spec, settings.training.seed)  # the trained model's initial weights
        untrained.backbone.set_normalisation(model.backbone.band_mean, model.backbone.band_std)
        infer = inference_device.infer
        folder = station_folder(station_root(raster_reader, storage, settings, station), station)
        scores, baseline, brightness = [], [], []
        progress = Progress("ranking predictions", 1, context.log.info, unit="images")
        for start in range(0, len(images), IMAGES_PER_BATCH):
            pixels = load_images(list(images["path"][start : start + IMAGES_PER_BATCH]), model.spec.image_size, station,
                                 folder)
            scores.append(score(model, pixels, infer))
            baseline.append(score(untrained, pixels, infer))
            brightness.append(mean_brightness(pixels))
        progress.done(station, len(images), suffix=f" on {inference_device.describe()}")
        predictions = images.drop(columns=["path"]).assign(
            score=np.concatenate(scores), untrained_score=np.concatenate(baseline),
            brightness=np.concatenate(brightness), model_version=current["model_version"],
            model_code=settings.model_code, station=station)
        storage.write_table(layout.predictions(station), pa.Table.from_pandas(predictions, preserve_index=False))
        with database.connect() as conn:
            rows = tables.replace_predictions(conn, settings.name, station, settings.model_code,
                                              current["model_version"], predictions)
        return dg.MaterializeResult(metadata={
            "rows": rows, "images_per_second": round(progress.rate(), 1), "device": inference_device.describe(),
            "model_version": current["model_version"], "table": f"{tables.PREDICTIONS}",
            "database": redacted(database.resolved_dsn()),
            "predictions": dg.MetadataValue.path(str(layout.predictions(station))),
        })

    return ranking_predictions


def report_asset(settings: RankingProductSettings, keys: RankingKeys, per_station) -> dg.AssetsDefinition:
    @per_station(key=keys.report, deps=[keys.predictions], code_version="1", kinds={"html", "postgres"}, check_specs=[
        dg.AssetCheckSpec("validation_tau_above_floor", asset=keys.report, description=(
            f"Kendall tau between score and observed {settings.variable} on the validation images is at least "
            f"{settings.min_validation_tau} (min_validation_tau)."))])
    @fails_clearly
    def ranking_report(context: dg.AssetExecutionContext, storage: ProductStorage, database: PostgresDatabase):
        """The station-model's diagnostics report (HTML, on storage and in this metadata): Kendall tau between
        score and observed value per split and on daily means, beside the untrained model and mean brightness;
        loss curves, scatter, time series, annotation counts. The model's row in ranking_models."""
        station = context.partition_key
        layout = layout_of(storage, settings)
        predictions = _frame(storage, layout.predictions(station))
        summary = storage.read_json(layout.dataset_summary(station), f"the dataset of station {station}")
        current = storage.read_json(layout.current_model(station), f"the ranking model of station {station}")
        timezone = summary["station"]["timezone"]
        taus = tau_table(predictions, {"model": "score", "untrained model": "untrained_score",
                                       "mean brightness": "brightness"}, timezone)
        model_info = {"model_code": settings.model_code, "model_version": current["model_version"],
                      "variable": settings.variable, "dataset_version": summary["version"],
                      "split_method": summary["split_method"], "best_epoch": current["best_epoch"] + 1}
        page = render_report(ReportInputs(
            f"{summary['station']['name']} ({station}): {settings.model_code}", summary["station"], model_info,
            summary["counts"], predictions, current["epochs"], taus, timezone))
        storage.write_bytes(layout.report(station), page.encode())
        validation_tau = taus["model"]["validation"]["tau"]
        counts = summary["counts"]
        with database.connect() as conn:
            tables.replace_model(conn, {
                "product": settings.name, "station": station, "model_code": settings.model_code,
                "station_id": summary["station"]["id"], "station_name": summary["station"]["name"],
                "variable": settings.variable, "model_version": current["model_version"],
                "dataset_version": summary["version"], "split_method": summary["split_method"],
                "train_pairs": counts["train_pairs"], "validation_pairs": counts["validation_pairs"],
                "train_images": counts["train_images"], "validation_images": counts["validation_images"],
                "validation_tau": validation_tau, "taus": taus,
                "lineage": {"dataset_version": summary["version"], "model_version": current["model_version"],
                            "training": current["training"], "filters": summary["filters"]},
                "report": str(layout.report(station)), "predictions": str(layout.predictions(station))})
        header = "| ranker | " + " | ".join(taus["model"]) + " |\n|---|" + "---|" * len(taus["model"]) + "\n"
        rows = "\n".join(f"| {name} | " + " | ".join("" if v["tau"] is None else f"{v['tau']:.3f}" for v in row.values())
                         + " |" for name, row in taus.items())
        passed = validation_tau is not None and validation_tau >= settings.min_validation_tau
        return dg.MaterializeResult(
            metadata={"kendall_tau": dg.MetadataValue.md(header + rows), "validation_tau": validation_tau,
                      "taus": dg.MetadataValue.json(taus), "model_version": current["model_version"],
                      "report": dg.MetadataValue.path(str(layout.report(station))),
                      "report_html": dg.MetadataValue.md(f"[{layout.report(station).name}]({layout.report(station)})")},
            check_results=[dg.AssetCheckResult(check_name="validation_tau_above_floor", passed=bool(passed), metadata={
                "validation_tau": validation_tau, "floor": settings.min_validation_tau,
                "untrained_validation_tau": taus["untrained model"]["validation"]["tau"],
                "brightness_validation_tau": taus["mean brightness"]["validation"]["tau"]})])

    return ranking_report
