"""The imagery product's scene sensor: a new or changed scene in the scene location refreshes the scene
catalog, then exactly the tile x date partitions whose scene is new or changed (chips, embeddings,
table); the per-tile change and GeoParquet follow by their automation conditions. The machinery is the
landing sensor every pipeline shares (``geoembed_assets.core.landing``)."""

import dagster as dg

from geoembed.imagery.settings import ImageryProductSettings
from geoembed_assets.core.landing import LANDING_TAG, LandingSensorSpec, build_landing_sensor, landing_sensor_name
from geoembed_assets.imagery.partitions import ImageryKeys, ImageryPartitions, scene_key
from geoembed_assets.imagery.state import known_scene_files, scene_files
from geoembed_resources import ProductStorage


def build_scene_sensor(settings: ImageryProductSettings, keys: ImageryKeys, parts: ImageryPartitions) -> dg.SensorDefinition:
    refresh_keys = [keys.chips, keys.embeddings, keys.table]

    def refresh(context: dg.SensorEvaluationContext, storage: ProductStorage, changed: set[str],
                catalog_id: int) -> list[dg.RunRequest]:
        """One run per new or changed scene. Without an encoder only the chips are made (materialize
        chip_encoder: the embeddings then follow by their automation condition)."""
        has_encoder = storage.current_model_path(settings.name).exists()
        selection = refresh_keys if has_encoder else refresh_keys[:1]
        if not has_encoder:
            context.log.warning(f"{settings.name}: no chip encoder yet; making chips only")
        requests = []
        for item in sorted(changed):
            tile, _, date = item.partition("|")
            requests.append(dg.RunRequest(run_key=f"refresh:{catalog_id}:{item}", asset_selection=selection,
                                          partition_key=scene_key(tile, date),
                                          tags={LANDING_TAG: landing_sensor_name(settings.name)}))
        return requests

    return build_scene_landing_sensor(settings, keys, refresh_keys, refresh, "a new or changed scene refreshes the "
                                      "scene catalog, then exactly its tile x date partition.")


def build_scene_landing_sensor(settings, keys, targets: list[dg.AssetKey], refresh, what: str) -> dg.SensorDefinition:
    """The landing sensor of a product made from Sentinel-2 scenes (imagery, quadkey): it watches the scene
    location, re-materializes the product's catalog (``keys.catalog``, whose metadata lists the
    ``changed_partitions``), then asks ``refresh`` for the runs of those partitions."""
    return build_landing_sensor(LandingSensorSpec(
        product=settings.name,
        location=settings.scenes,
        minimum_interval_seconds=settings.scene_check_seconds,
        source_key=keys.source,
        scan_key=keys.catalog,
        changed_metadata_key="changed_partitions",
        targets=tuple(targets),
        list_files=lambda raster_reader: scene_files(raster_reader, settings),
        known_files=lambda storage: known_scene_files(storage, settings.name),
        refresh=refresh,
        description=f"Watches {settings.scenes} for Sentinel-2 scenes: {what}",
    ))
