"""The land-cover product's landing sensor: a new or changed raster in the landing location refreshes
the H3 stencil, then exactly the region partitions the file covers (a changed stacked source: every region) (samples, embeddings, table), in
partition ranges (see ``geoembed_assets.core.landing``)."""

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from geoembed.core import sources
from geoembed.landcover.settings import ProductSettings
from geoembed_assets.core.landing import LANDING_TAG, LandingSensorSpec, build_landing_sensor, landing_sensor_name
from geoembed_assets.landcover.partitions import LandcoverKeys
from geoembed_resources import ProductStorage


def build_landcover_landing_sensor(
    settings: ProductSettings,
    keys: LandcoverKeys,
    regions_partitions: dg.DynamicPartitionsDefinition,
    partitions_per_run: int,
) -> dg.SensorDefinition:
    refresh_keys = [keys.samples, keys.embeddings, keys.table]

    def refresh(context: dg.SensorEvaluationContext, storage: ProductStorage, changed_regions: set[str],
                stencil_id: int) -> list[dg.RunRequest]:
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

    return build_landing_sensor(LandingSensorSpec(
        product=settings.name,
        location=str(settings.landing),
        minimum_interval_seconds=settings.landing_check_seconds,
        source_key=keys.source,
        scan_key=keys.regions,
        changed_metadata_key="changed_regions",
        targets=tuple(refresh_keys),
        list_files=lambda raster_reader: raster_reader.watched_files(settings),
        known_files=lambda storage: storage.known_source_versions(settings.name),
        refresh=refresh,
        description=f"Watches {settings.landing}/{settings.landing_pattern}: a new or changed file refreshes the "
        "H3 stencil, then exactly the region partitions the file covers.",
    ))
