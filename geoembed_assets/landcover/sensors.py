"""The landing sensor: refresh exactly what newly landed raster files touch.

Each evaluation lists the product's landing location (a local directory or an s3:// prefix) and
compares it with its cursor ({file: [fingerprint, content version]}):

1. New or changed files (content, not just a touch): the sensor records a new data version of the
   source (an observation) and requests a run of ``h3_regions``. That run scans only those files,
   registers any new region partitions and lists the regions whose source data changed.
   Removed files are reported (sensor log and observation metadata) and handled by the same run:
   regions still covered by another file are refreshed, the rest keep their rows.
2. When such an ``h3_regions`` run has finished, the sensor requests runs for exactly its
   ``changed_regions`` partitions: samples, embeddings and the database table, in partition ranges.

Unchanged files never trigger again; only files whose size or modification time changed are read.
"""

import time

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from geoembed.core import sources
from geoembed.landcover.settings import ProductSettings
from geoembed_assets.landcover.partitions import LandcoverKeys
from geoembed_resources import ProductStorage, RasterReader

# Tag on the runs the landing sensor requests (h3_regions reports it back in its metadata).
LANDING_TAG = "geoembed/landing_sensor"
# Stop reading new files after this long in one evaluation (Dagster's sensor timeout is 60 s);
# the rest are read on the next tick.
VERSIONING_BUDGET_SECONDS = 30.0


def landing_sensor_name(product: str) -> str:
    return f"{product}_landing_sensor"


def build_landing_sensor(
    settings: ProductSettings,
    keys: LandcoverKeys,
    regions_partitions: dg.DynamicPartitionsDefinition,
    partitions_per_run: int,
) -> dg.SensorDefinition:
    name = settings.name
    sensor_name = landing_sensor_name(name)
    source_key, regions_key = keys.source, keys.regions
    refresh_keys = [keys.samples, keys.embeddings, keys.table]

    @dg.sensor(
        name=sensor_name,
        minimum_interval_seconds=settings.landing_check_seconds,
        target=dg.AssetSelection.assets(regions_key, *refresh_keys),
        description=f"Watches {settings.landing}/{settings.landing_pattern}: a new or changed file refreshes the "
        "H3 stencil, then exactly the region partitions the file covers.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, raster_reader: RasterReader, storage: ProductStorage):
        started = time.monotonic()
        known, state = sources.decode_cursor(context.cursor)
        if not context.cursor:
            # First evaluation: what the product was last built from counts as seen.
            known = storage.known_source_versions(name)
        listing = raster_reader.list_files(settings)
        listed = time.monotonic()
        changes = sources.diff_landing(known, listing, deadline=started + VERSIONING_BUDGET_SECONDS)
        known = sources.advance_cursor(known, changes)
        run_requests: list[dg.RunRequest] = []
        asset_events: list[dg.AssetObservation] = []
        if changes.removed:
            context.log.warning(f"{len(changes.removed)} files were removed from {settings.landing}: "
                                f"{changes.removed[:20]}; the stencil refresh keeps the rows only they covered")
        if changes.any:
            manifest = sources.manifest_version(
                [sources.SourceFile(n, "", 0, 0, version=v) for n, (_, v) in known.items()])
            asset_events.append(dg.AssetObservation(
                asset_key=source_key,
                tags={DATA_VERSION_TAG: manifest},
                metadata={
                    "files": len(known),
                    "added": dg.MetadataValue.json([f.name for f in changes.added][:100]),
                    "changed": dg.MetadataValue.json([f.name for f in changes.changed][:100]),
                    "removed": dg.MetadataValue.json(changes.removed[:100]),
                    "observed_by": sensor_name,
                },
            ))
            run_requests.append(dg.RunRequest(
                run_key=f"stencil:{manifest}",
                asset_selection=[regions_key],
                tags={LANDING_TAG: sensor_name},
            ))
        # Stage 2: stencil runs this sensor asked for that have finished since the last look.
        last_id = int(state.get("stencil_storage_id", 0))
        changed_regions: set[str] = set()
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=regions_key, after_storage_id=last_id), limit=1000, ascending=True
        ).records
        for record in records:
            last_id = max(last_id, record.storage_id)
            metadata = record.asset_materialization.metadata if record.asset_materialization else {}
            trigger = metadata.get("trigger")
            if trigger is None or trigger.value != sensor_name:
                continue  # a stencil someone else made: its runs refresh what they need themselves
            changed_regions.update(metadata["changed_regions"].value)
        if changed_regions:
            run_requests += _refresh_requests(context, storage, settings, regions_partitions, refresh_keys,
                                              changed_regions, last_id, partitions_per_run)
        elapsed = time.monotonic() - started
        context.log.info(
            f"{len(listing)} files listed in {listed - started:.2f} s; {len(changes.added)} added, "
            f"{len(changes.changed)} changed, {len(changes.touched)} touched, {len(changes.removed)} removed, "
            f"{len(changes.pending)} left for the next tick; {len(changed_regions)} regions to refresh; {elapsed:.2f} s")
        cursor = sources.encode_cursor(known, {"stencil_storage_id": last_id})
        if not run_requests and not asset_events:
            return dg.SensorResult(skip_reason=f"no new or changed files among {len(listing)}", cursor=cursor)
        return dg.SensorResult(run_requests=run_requests, asset_events=asset_events, cursor=cursor)

    return landing_sensor


def _refresh_requests(
    context: dg.SensorEvaluationContext,
    storage: ProductStorage,
    settings: ProductSettings,
    regions_partitions: dg.DynamicPartitionsDefinition,
    refresh_keys: list[dg.AssetKey],
    changed_regions: set[str],
    stencil_id: int,
    partitions_per_run: int,
) -> list[dg.RunRequest]:
    """Runs for the changed regions, one per range of consecutive partition keys. Without a trained
    model only the samples are refreshed (embeddings need a model: materialize embedding_model)."""
    ordered = context.instance.get_dynamic_partitions(regions_partitions.name)
    wanted = changed_regions & set(ordered)
    has_model = storage.current_model_path(settings.name).exists()
    selection = refresh_keys if has_model else refresh_keys[:1]
    if not has_model:
        context.log.warning(f"{settings.name}: no trained model yet; refreshing samples only")
    requests = []
    for batch in sources.contiguous_batches(ordered, wanted, partitions_per_run):
        tags = {LANDING_TAG: landing_sensor_name(settings.name)}
        if len(batch) == 1:
            requests.append(dg.RunRequest(run_key=f"refresh:{stencil_id}:{batch[0]}", asset_selection=selection,
                                          partition_key=batch[0], tags=tags))
        else:
            tags.update({ASSET_PARTITION_RANGE_START_TAG: batch[0], ASSET_PARTITION_RANGE_END_TAG: batch[-1]})
            requests.append(dg.RunRequest(run_key=f"refresh:{stencil_id}:{batch[0]}:{batch[-1]}",
                                          asset_selection=selection, tags=tags))
    return requests
