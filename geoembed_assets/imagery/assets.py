"""The asset graph of one imagery product ([tile x date] and [tile] = partitioned so):

    scene_source (observable) -> scene_catalog -> scene_chips [tile x date] -> chip_encoder
    scene_chips + chip_encoder -> chip_embeddings [tile x date] -> chip_change [tile]
                                                                -> tile_geoparquet [tile]
                                                                -> chip_table [tile x date] -> chip_index

Each asset is built by its own small factory; bodies say what they make from what and call
``geoembed.imagery`` for the logic; every read or write goes through a resource.
"""

import json
from dataclasses import dataclass

import dagster as dg
import numpy as np
import shapely
from pydantic import Field

from geoembed.core.geometry import area_of_interest
from geoembed.core.grids.mgrs import published_tile
from geoembed.core.lineage import content_version
from geoembed.core.progress import Progress
from geoembed.core.render import loss_curve_png, markdown_image
from geoembed.core.sinks import pgvector as db
from geoembed.core.sinks.geoparquet import write_geoparquet
from geoembed.core.sinks.zarr import open_store, write_dataset
from geoembed.core.sources import manifest_version, with_versions
from geoembed.imagery import encoders
from geoembed.imagery.aoi import chip_grid_geojson
from geoembed.imagery.catalog import build_catalog
from geoembed.imagery.change import DateEmbeddings, change_over_time, change_plot
from geoembed.imagery.chips import ChipGrid
from geoembed.imagery.encoders.chipnet import ChipNetSpec
from geoembed.imagery.export import DateRows, clay_file_name, lineage_metadata, write_tile_geoparquet
from geoembed.imagery.layout import ImageryLayout
from geoembed.imagery.partition import chip_scene, chips_to_embed, embed_chips, open_datacube
from geoembed.imagery.scenes import default_bands
from geoembed.imagery.search_rows import CHIP_H3_RESOLUTION, chip_rows
from geoembed.imagery.settings import ClayEncoderSettings, ImageryProductSettings
from geoembed.imagery.training import load_training_chips, train_chip_encoder
from geoembed_assets.core.timing import timed_asset
from geoembed_assets.core.failures import TRANSIENT_RETRY, fails_clearly
from geoembed_assets.core.landing import LANDING_TAG
from geoembed_assets.core.serving import index_asset
from geoembed_assets.core.policies import (
    GPU_STEP, REFRESH_WHEN_UPSTREAM_CHANGES, batched_backfills, evaluation_check_result, evaluation_check_spec,
)
from geoembed_assets.imagery.partitions import ImageryKeys, ImageryPartitions
from geoembed_assets.imagery.sensors import build_scene_sensor
from geoembed_assets.imagery.state import known_scene_files, layout_of, read_catalog, scene_files
from geoembed_resources import InferenceDevice, PostgresDatabase, ProductStorage, RasterReader
from geoembed_resources.postgres import redacted


class ChipTrainingConfig(dg.Config):
    """Hyper-parameters of our chip encoder's triplet training (run config of ``chip_encoder``)."""

    steps: int = Field(default=300, ge=1, le=1_000_000)
    batch_size: int = Field(default=32, ge=2, le=4096)
    crop_size: int = Field(default=64, ge=16, le=2048, description="Training crops (pixels); at most half the chip size.")
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    margin: float = Field(default=0.5, gt=0, le=2.0)
    max_train_chips: int = Field(default=512, ge=2, description="Chips with data held in memory for training.")
    held_out_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0


@dataclass(frozen=True)
class ImageryAssets:
    settings: ImageryProductSettings
    keys: ImageryKeys
    partitions: ImageryPartitions
    definitions: dg.Definitions


def build_imagery_product(settings: ImageryProductSettings) -> ImageryAssets:
    """Every asset, check, job and sensor of one imagery product."""
    keys = ImageryKeys(settings.name)
    parts = ImageryPartitions.of(settings.name)
    per_scene = timed_asset(partitions_def=parts.scenes, group_name=settings.name,
                        backfill_policy=batched_backfills(), retry_policy=TRANSIENT_RETRY)
    per_tile = timed_asset(partitions_def=parts.tiles, group_name=settings.name,
                       backfill_policy=batched_backfills(), retry_policy=TRANSIENT_RETRY)
    single = timed_asset(group_name=settings.name, retry_policy=TRANSIENT_RETRY)
    definitions = dg.Definitions(
        assets=[
            source_asset(settings, keys),
            catalog_asset(settings, keys, parts, single),
            chips_asset(settings, keys, parts, per_scene),
            encoder_asset(settings, keys, single),
            embeddings_asset(settings, keys, parts, per_scene),
            change_asset(settings, keys, parts, per_tile),
            geoparquet_asset(settings, keys, parts, per_tile),
            table_asset(settings, keys, parts, per_scene),
            index_asset(settings.name, keys.index, keys.table, "chips", single,
                        "The search indexes and the cosine HNSW index of the current model's chip table, with its "
                        "recall against exact search."),
        ],
        jobs=[dg.define_asset_job(keys.observe_job, selection=dg.AssetSelection.assets(keys.source))],
        sensors=[build_scene_sensor(settings, keys, parts)],
    )
    return ImageryAssets(settings, keys, parts, definitions)


def _partition_scenes(context: dg.AssetExecutionContext, parts: ImageryPartitions) -> list[tuple[str, str]]:
    keys = [parts.scenes.get_partition_key_from_str(k) for k in context.partition_keys]
    return [(k.keys_by_dimension["tile"], k.keys_by_dimension["date"]) for k in keys]


def source_asset(settings: ImageryProductSettings, keys: ImageryKeys) -> dg.SourceAsset:
    rasters = getattr(settings, "rasters", None)
    location = settings.scenes if rasters is None else rasters.location

    @dg.observable_source_asset(key=keys.source, group_name=settings.name, description=(
        f"Sentinel-2 scenes in {location}" if rasters is None else f"rasters ({rasters.pattern}) in {location}"))
    def scene_source(raster_reader: RasterReader, storage: ProductStorage) -> dg.ObserveResult:
        files = with_versions(scene_files(raster_reader, settings), known_scene_files(storage, settings.name))
        return dg.ObserveResult(data_version=dg.DataVersion(manifest_version(files)),
                                metadata={"location": location, "files": len(files)})

    return scene_source


def catalog_asset(settings: ImageryProductSettings, keys: ImageryKeys, parts: ImageryPartitions,
                  single) -> dg.AssetsDefinition:
    name = settings.name

    @single(key=keys.catalog, deps=[keys.source], code_version="1", kinds={"stac", "python"},
            pool=f"{name}_catalog")  # one catalog at a time: each compares itself with the previous one
    @fails_clearly
    def scene_catalog(context: dg.AssetExecutionContext, raster_reader: RasterReader, storage: ProductStorage):
        """The scenes of the product's tiles (its tile list, or the tiles its area of interest touches): for
        every tile and date, the band files (found by Sentinel-2 file names or STAC items) and their content
        versions. Registers tile and date partitions, writes the chip grids of each tile (GeoJSON, whole
        tile and area of interest), and lists the scenes that are new or changed (what needs a refresh)."""
        layout = layout_of(storage, name)
        previous = read_catalog(storage, name) if layout.catalog.exists() else None
        files = with_versions(scene_files(raster_reader, settings), previous.files if previous else {})
        catalog = build_catalog(settings, files, raster_reader.read_text, content_version)
        changed = catalog.changed_since(previous)
        for definition, wanted in ((parts.tiles, catalog.tiles), (parts.dates, catalog.dates)):
            new = sorted(set(wanted) - set(context.instance.get_dynamic_partitions(definition.name)))
            if new:
                context.instance.add_dynamic_partitions(definition.name, new)
        area = area_of_interest(settings.aoi) if settings.aoi else None
        for tile in catalog.tiles:
            grid = ChipGrid(published_tile(tile), settings.chip_size)
            storage.write_json(layout.chip_grid(tile, "full_tile"), chip_grid_geojson(grid))
            if area is not None:
                storage.write_json(layout.chip_grid(tile, "aoi"), chip_grid_geojson(grid, area))
        storage.write_json(layout.catalog, catalog.to_json())
        for item, why in list(catalog.rejected.items())[:20]:
            context.log.warning(f"{item} is not used: {why}")
        return dg.MaterializeResult(metadata={
            "tiles": dg.MetadataValue.json(catalog.tiles),
            "scenes": len(catalog.scenes),
            "dates": dg.MetadataValue.json(catalog.dates),
            "changed_partitions": dg.MetadataValue.json([f"{t}|{d}" for t, d in changed]),
            "changed_count": len(changed),
            "rejected": dg.MetadataValue.json(catalog.rejected),
            "superseded": dg.MetadataValue.json(catalog.superseded),
            "outside_tiles": dg.MetadataValue.json(catalog.outside),
            "scene_versions": dg.MetadataValue.json(catalog.versions()),
            "catalog": dg.MetadataValue.path(str(layout.catalog)),
            "trigger": context.run.tags.get(LANDING_TAG, ""),
        })

    return scene_catalog


def chips_asset(settings: ImageryProductSettings, keys: ImageryKeys, parts: ImageryPartitions,
                per_scene) -> dg.AssetsDefinition:
    name = settings.name

    @per_scene(key=keys.chips, deps=[keys.catalog], code_version="1", kinds={"zarr", "parquet"})
    @fails_clearly
    def scene_chips(context: dg.AssetExecutionContext, raster_reader: RasterReader, storage: ProductStorage):
        """Per tile x date: the scene cut into the tile's chips. Bands resampled to the tile's 10 m grid
        (bilinear; masks nearest) into a datacube (Zarr, one chunk per chip), an RGB thumbnail per chip with
        data, and a chip table (GeoParquet) of every chip of the tile: window, bounds in the tile CRS and as
        a lon/lat polygon, no-data fraction and class, cloud fraction where the scene has a mask, sources.
        A tile x date without a scene materializes empty, saying so."""
        catalog, layout = read_catalog(storage, name), layout_of(storage, name)
        scenes = _partition_scenes(context, parts)
        progress = Progress("chips", len(scenes), context.log.info, unit="chips", part_label="scene")
        classes = {"all_data": 0, "partial": 0, "no_data": 0}
        missing, versions = [], {}
        for tile, date in scenes:
            scene = catalog.scene(tile, date)
            if scene is None:
                missing.append(f"{tile}|{date}")
                continue
            grid = ChipGrid(published_tile(tile), settings.chip_size)

            def save_thumbnail(chip_id: str, png: bytes, tile=tile, date=date) -> str:
                path = layout.thumbnail(tile, date, chip_id)
                storage.write_bytes(path, png)
                return str(path)

            result = chip_scene(scene, grid, settings.bands or list(default_bands(scene.level)), raster_reader.open,
                                layout.datacube(tile, date), save_thumbnail, {"product": name})
            write_geoparquet(layout.chip_table(tile, date), result.table, result.footprints,
                             {"geoembed:scene_id": scene.scene_id, "geoembed:scene_version": scene.version})
            classes = {k: classes[k] + v for k, v in result.classes.items()}
            versions[f"{tile}|{date}"] = scene.version
            progress.done(f"{tile} {date}", result.datacube_chips, suffix=f" ({result.chips_with_data} with data)")
        if missing:
            context.log.info(f"no scene for {len(missing)} tile x date partitions: {missing[:20]}")
        return dg.MaterializeResult(metadata={
            "scenes": len(versions), "without_scene": dg.MetadataValue.json(missing),
            "chips_in_datacubes": progress.items, "chips_by_class": dg.MetadataValue.json(classes),
            "chips_per_second": round(progress.rate(), 2), "compute_seconds": round(progress.seconds, 3),
            "scene_versions": dg.MetadataValue.json(versions), "chip_size": settings.chip_size,
        })

    return scene_chips


def _current_encoder(storage: ProductStorage, settings: ImageryProductSettings) -> encoders.LoadedEncoder:
    current = storage.read_json(storage.current_model_path(settings.name), f"the chip encoder of {settings.name!r}")
    if current["kind"] == "clay":
        clay: ClayEncoderSettings = settings.encoder  # type: ignore[assignment]
        if current.get("checkpoint_sha256") and clay.sha256 is None:
            clay = clay.model_copy(update={"sha256": current["checkpoint_sha256"]})
        loaded = encoders.clay_encoder(clay.checkpoint_path, clay.size, clay.bands, clay.sha256, clay.patch_embeddings)
        if loaded.version != current["model_version"]:
            raise dg.Failure(f"the Clay checkpoint now gives model version {loaded.version}, not "
                             f"{current['model_version']}; re-materialize chip_encoder")
        return loaded
    model, _ = encoders.load_chipnet((storage.model_dir(settings.name, current["model_version"]) / "checkpoint.pt")
                                     .read_bytes())
    return encoders.chipnet_encoder(model, current["model_version"])


def encoder_asset(settings: ImageryProductSettings, keys: ImageryKeys, single) -> dg.AssetsDefinition:
    name = settings.name

    @single(key=keys.encoder, deps=[keys.chips], code_version="1", kinds={"pytorch"}, check_specs=[
        dg.AssetCheckSpec("beats_untrained_baseline", asset=keys.encoder, description=(
            "Our encoder: held-out triplet accuracy of the trained network exceeds the same network untrained "
            "(Clay: pretrained, nothing to compare).")), evaluation_check_spec(keys.encoder, "chips")])
    @fails_clearly
    def chip_encoder(context: dg.AssetExecutionContext, config: ChipTrainingConfig, storage: ProductStorage):
        """The chip encoder. ``geoembed``: our ChipNet, trained self-supervised (triplet loss on crops:
        neighbours alike, distant chips apart) on the product's chips, scored on held-out blocks of chips.
        ``clay``: Clay v1.5 from the configured local checkpoint (SHA-256 checked and recorded; keys and
        shapes checked). Versioned by content hash of architecture and weights."""
        if isinstance(settings.encoder, ClayEncoderSettings):
            clay = settings.encoder
            loaded = encoders.clay_encoder(clay.checkpoint_path, clay.size, clay.bands, clay.sha256,
                                           clay.patch_embeddings)
            current = {"model_version": loaded.version, "kind": "clay", **loaded.description}
            storage.write_json(storage.model_dir(name, loaded.version) / "encoder.json", current)
            storage.write_json(storage.current_model_path(name), current)
            return dg.MaterializeResult(
                data_version=dg.DataVersion(loaded.version),
                check_results=[dg.AssetCheckResult(check_name="beats_untrained_baseline", passed=True,
                                                   metadata={"note": "pretrained Clay weights: not trained here"}),
                               evaluation_check_result([])],
                metadata={"model_version": loaded.version, "kind": "clay", "size": clay.size,
                          "checkpoint": dg.MetadataValue.path(clay.checkpoint_path),
                          "checkpoint_sha256": loaded.description["checkpoint_sha256"],
                          "bands": dg.MetadataValue.json(loaded.bands), "embedding_dim": loaded.embedding_dim})
        catalog, layout = read_catalog(storage, name), layout_of(storage, name)
        cubes = [(s.tile, layout.datacube(s.tile, s.date), layout.chip_table(s.tile, s.date)) for s in catalog.scenes]
        bands = settings.bands or list(default_bands(catalog.scenes[0].level if catalog.scenes else "L1C"))
        chips = load_training_chips([(t, open_datacube(cube), chips_to_embed(storage.read_table(table))[0])
                                     for t, cube, table in cubes if table.exists()], bands,
                                    config.max_train_chips, config.seed)
        spec = ChipNetSpec(tuple(bands), settings.encoder.embedding_dim, settings.encoder.patch_dim,
                           settings.encoder.patch_size, settings.encoder.width)
        trained = train_chip_encoder(spec, chips, config, log=context.log.info, warn=context.log.warning)
        folder = storage.model_dir(name, trained.version)
        metrics = {"model_version": trained.version, "kind": "geoembed", "spec": spec.to_json(),
                   "hyper_parameters": config.model_dump(), "losses": trained.losses,
                   "training_seconds": trained.seconds, "quality_triplet_accuracy": trained.quality,
                   "train_chips": trained.train_chips, "held_out_chips": trained.held_out_chips,
                   "evaluation_problems": trained.problems, "scene_versions": catalog.versions()}
        storage.write_bytes(folder / "checkpoint.pt", encoders.save_chipnet(trained.model, {"metrics": metrics}))
        loss_png = loss_curve_png(trained.losses, f"{name}: chip encoder triplet loss, model {trained.version}")
        storage.write_bytes(folder / "loss_curve.png", loss_png)
        storage.write_json(folder / "metrics.json", metrics)
        storage.write_json(storage.current_model_path(name), {"model_version": trained.version, "kind": "geoembed",
                                                               "folder": str(folder)})
        return dg.MaterializeResult(
            data_version=dg.DataVersion(trained.version),
            check_results=[dg.AssetCheckResult(
                check_name="beats_untrained_baseline", passed=trained.beats_untrained,
                severity=dg.AssetCheckSeverity.WARN, metadata=trained.quality),
                evaluation_check_result(trained.problems)],
            metadata={"model_version": trained.version, "kind": "geoembed",
                      "quality_triplet_accuracy": dg.MetadataValue.json(trained.quality),
                      "train_chips": trained.train_chips, "held_out_chips": trained.held_out_chips,
                      "evaluation_problems": dg.MetadataValue.json(trained.problems),
                      "training_seconds": round(trained.seconds, 1),
                      "hyper_parameters": dg.MetadataValue.json({**config.model_dump(), **spec.to_json()}),
                      "loss_curve": dg.MetadataValue.md(markdown_image(loss_png, "triplet loss")),
                      "checkpoint": dg.MetadataValue.path(str(folder / "checkpoint.pt"))})

    return chip_encoder


EMBEDDING_CHECKS = (
    ("every_chip_with_data_embedded", "Every chip with data has an embedding (no-data chips are skipped)."),
    ("no_nan", "No chip embedding has a NaN component (a failed batch never becomes NaN vectors)."),
    ("unit_norm", "Our encoder's vectors have norm 1 (+-1e-3); Clay's class token is not normalised."),
)


def embeddings_asset(settings: ImageryProductSettings, keys: ImageryKeys, parts: ImageryPartitions,
                     per_scene) -> dg.AssetsDefinition:
    name = settings.name

    @per_scene(key=keys.embeddings, automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES, deps=[keys.chips, keys.encoder],
               code_version="1", kinds={"pytorch", "zarr"}, **GPU_STEP,
               check_specs=[dg.AssetCheckSpec(n, asset=keys.embeddings, description=d) for n, d in EMBEDDING_CHECKS])
    @fails_clearly
    def chip_embeddings(context: dg.AssetExecutionContext, inference_device: InferenceDevice, storage: ProductStorage):
        """Per tile x date: the encoder's class-level embedding of every chip with data (and its patch-level
        embeddings where the encoder keeps them), written to a Zarr store per tile x date and model version,
        with the model version and scene version of every chip."""
        catalog, layout = read_catalog(storage, name), layout_of(storage, name)
        encoder = _current_encoder(storage, settings)
        device = inference_device.describe()
        progress = Progress("embeddings", len(context.partition_keys), context.log.info, unit="chips",
                            part_label="scene")
        missing = with_nan = off_norm = skipped = 0
        for tile, date in _partition_scenes(context, parts):
            scene = catalog.scene(tile, date)
            if scene is None:
                continue
            table = storage.read_table(layout.chip_table(tile, date))
            out = embed_chips(table, open_datacube(layout.datacube(tile, date)), encoder,
                              lambda model, inputs: inference_device.infer(model, inputs), scene, {"product": name})
            write_dataset(layout.embeddings(encoder.version, tile, date), out.dataset)
            with_nan += out.with_nan
            off_norm += out.off_unit_norm or 0
            skipped += out.skipped_no_data
            missing += int(np.isnan(out.dataset["embedding"].values).all(axis=1).sum())
            progress.done(f"{tile} {date}", out.chips, suffix=f" on {device}")
        return dg.MaterializeResult(
            metadata={"model_version": encoder.version, "encoder": encoder.kind, "chips": progress.items,
                      "skipped_no_data_chips": skipped, "chips_per_second": round(progress.rate(), 2),
                      "device": device, "embedding_dim": encoder.embedding_dim},
            check_results=[
                dg.AssetCheckResult(check_name="every_chip_with_data_embedded", passed=missing == 0,
                                    metadata={"chips_without_embedding": missing}),
                dg.AssetCheckResult(check_name="no_nan", passed=with_nan == 0, metadata={"chips_with_nan": with_nan}),
                dg.AssetCheckResult(check_name="unit_norm", passed=off_norm == 0,
                                    metadata={"chips_off_unit_norm": off_norm, "encoder": encoder.kind}),
            ],
        )

    return chip_embeddings


def _tile_series(storage: ProductStorage, settings: ImageryProductSettings, tile: str):
    """(current model version, [(date, embeddings dataset)]) of a tile's dates that have embeddings."""
    catalog, layout = read_catalog(storage, settings.name), layout_of(storage, settings.name)
    current = storage.read_json(storage.current_model_path(settings.name), f"the chip encoder of {settings.name!r}")
    version = current["model_version"]
    series = []
    for date in catalog.dates_of(tile):
        path = layout.embeddings(version, tile, date)
        if path.exists():
            series.append((date, open_store(path, "chip embeddings")))
    if not series:
        raise dg.Failure(f"tile {tile} has no chip embeddings of model {version}; materialize chip_embeddings first")
    return version, series


def change_asset(settings: ImageryProductSettings, keys: ImageryKeys, parts: ImageryPartitions,
                 per_tile) -> dg.AssetsDefinition:
    name = settings.name

    @per_tile(key=keys.change, automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES,
              deps=[dg.AssetDep(keys.embeddings, partition_mapping=parts.per_tile)], code_version="1",
              kinds={"parquet", "matplotlib"})
    @fails_clearly
    def chip_change(context: dg.AssetExecutionContext, storage: ProductStorage):
        """Per tile: for every chip, the cosine similarity of each date's embedding to its first date's,
        as a table (Parquet) and a plot; chips below the product's threshold are flagged as changed."""
        layout = layout_of(storage, name)
        results = {}
        for tile in context.partition_keys:
            version, series = _tile_series(storage, settings, tile)
            table = change_over_time(tile, [DateEmbeddings(d, ds["chip_id"].values, ds["row"].values, ds["col"].values,
                                                           ds["embedding"].values) for d, ds in series],
                                     settings.change_threshold)
            storage.write_table(layout.change_table(version, tile), table)
            png = change_plot(table, tile, settings.change_threshold)
            storage.write_bytes(layout.change_plot(version, tile), png)
            changed = table.filter(table["changed"]).to_pydict()
            results[tile] = (version, len(series), changed, png, table.num_rows)
            context.log.info(f"change: tile {tile}, {len(series)} dates, {len(changed['chip_id'])} chip-dates changed")
        tile = context.partition_keys[-1]
        version, dates, changed, png, rows = results[tile]
        flagged = [f"{d} {c} ({s:.3f})" for d, c, s in zip(changed["date"], changed["chip_id"], changed["similarity"])]
        return dg.MaterializeResult(metadata={
            "model_version": version, "dates": dates, "threshold": settings.change_threshold, "rows": rows,
            "changed_chip_dates": len(flagged), "changed": dg.MetadataValue.json(flagged[:200]),
            "plot": dg.MetadataValue.md(markdown_image(png, f"change over time, tile {tile}")),
            "table": dg.MetadataValue.path(str(layout.change_table(version, tile))),
        })

    return chip_change


def geoparquet_asset(settings: ImageryProductSettings, keys: ImageryKeys, parts: ImageryPartitions,
                     per_tile) -> dg.AssetsDefinition:
    name = settings.name

    @per_tile(key=keys.geoparquet, automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES,
              deps=[dg.AssetDep(keys.embeddings, partition_mapping=parts.per_tile)], code_version="1",
              kinds={"geoparquet"})
    @fails_clearly
    def tile_geoparquet(context: dg.AssetExecutionContext, storage: ProductStorage):
        """Per tile: one GeoParquet file in Clay's layout, {MGRS}_{MINDATE}_{MAXDATE}_v{VERSION}.gpq (source_url,
        date, embeddings as a FixedShapeTensor, chip footprint as WKB in OGC:CRS84), a row group per date.
        VERSION numbers the product's model versions (v001 for the first); lineage in the file's metadata."""
        layout = layout_of(storage, name)
        registry_path = layout.geoparquet_versions
        registry = storage.read_json(registry_path, "versions") if registry_path.exists() else {}
        written = {}
        for tile in context.partition_keys:
            version, series = _tile_series(storage, settings, tile)
            registry.setdefault(version, len(registry) + 1)
            storage.write_json(registry_path, registry)
            written[tile] = _write_tile_file(storage, layout, tile, version, registry[version], series)
        tile = context.partition_keys[-1]
        return dg.MaterializeResult(metadata={**written[tile], "file": dg.MetadataValue.path(written[tile]["file"])})

    return tile_geoparquet


def _write_tile_file(storage: ProductStorage, layout: ImageryLayout, tile: str, model_version: str, number: int,
                     series) -> dict:
    dates = [d for d, _ in series]
    path = layout.geoparquet / clay_file_name(tile, dates, number)
    footprints: dict[str, np.ndarray] = {}  # per date: the embedded chips' lon/lat polygons (small)
    for date, ds in series:
        table = storage.read_table(layout.chip_table(tile, date), columns=["chip_id", "geometry"])
        wkb = dict(zip(table["chip_id"].to_pylist(), table["geometry"].to_pylist()))
        footprints[date] = shapely.from_wkb(np.array([wkb[str(c)] for c in ds["chip_id"].values], dtype=object))

    def rows():  # one date at a time: only its embeddings are in memory
        for date, ds in series:
            ids = [str(c) for c in ds["chip_id"].values]
            cube = layout.datacube(tile, date)
            yield DateRows(date, [f"{cube}#chip={c}" for c in ids], ds["embedding"].values, footprints[date],
                           ds.attrs.get("scene_version", ""), ids)

    all_footprints = np.concatenate(list(footprints.values()))
    dim = int(series[0][1].sizes["embedding_dim"])
    encoder = json.loads(series[0][1].attrs.get("encoder", "{}"))
    scene_versions = {d: ds.attrs.get("scene_version", "") for d, ds in series}
    summary = write_tile_geoparquet(path, dim, rows(), all_footprints,
                                    lineage_metadata(model_version, encoder, scene_versions))
    stale = [p for p in layout.geoparquet.glob(f"{tile}_*_v{number:03d}.gpq") if p.name != path.name]
    for old in stale:  # the same model's file for fewer dates: replaced by this one
        old.unlink()
    return {"file": str(path), "rows": summary["rows"], "dates": dates, "model_version": model_version,
            "replaced": [p.name for p in stale]}


def table_asset(settings: ImageryProductSettings, keys: ImageryKeys, parts: ImageryPartitions,
                per_scene) -> dg.AssetsDefinition:
    name = settings.name

    @per_scene(key=keys.table, automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES, deps=[keys.embeddings],
               code_version="1", kinds={"postgres"})
    @fails_clearly
    def chip_table(context: dg.AssetExecutionContext, storage: ProductStorage, database: PostgresDatabase):
        """Per tile x date: the chip embeddings in PostgreSQL (pgvector), one table per model version, by the
        same code path as the H3 tables: the scene's rows replaced in one transaction (DELETE + binary COPY),
        with the chip footprint (PostGIS when available) and the H3 cell of its centre for area filters."""
        layout = layout_of(storage, name)
        current = storage.read_json(storage.current_model_path(name), f"the chip encoder of {name!r}")
        version = current["model_version"]
        progress = Progress("chip table", len(context.partition_keys), context.log.info, unit="rows",
                            part_label="scene")
        seconds, tables = 0.0, set()
        with database.connect() as conn:
            for tile, date in _partition_scenes(context, parts):
                path = layout.embeddings(version, tile, date)
                if not path.exists():
                    continue
                ds = open_store(path, "chip embeddings")
                chips = storage.read_table(layout.chip_table(tile, date))
                rows = chip_rows(tile, date, ds, chips, f"{layout.datacube(tile, date)}")
                table = db.ensure_embedding_table(conn, name, version, int(ds.sizes["embedding_dim"]), CHIP_H3_RESOLUTION,
                                                  db.CHIPS, meta={"chip_size": settings.chip_size})
                tables.add(table)
                seconds += db.replace_partition(conn, table, rows, db.CHIPS)
                progress.done(f"{tile} {date}", len(rows.keys), suffix=f" into {db.SCHEMA}.{table}")
        return dg.MaterializeResult(metadata={
            "rows": progress.items, "tables": ", ".join(sorted(tables)), "model_version": version,
            "rows_per_second": round(progress.items / max(seconds, 1e-9), 1),
            "database": redacted(database.resolved_dsn())})

    return chip_table


__all__ = ["ImageryAssets", "build_imagery_product"]
