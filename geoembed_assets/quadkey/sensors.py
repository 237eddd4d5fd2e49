"""The quadkey product's scene sensor: a new or changed scene in the scene location refreshes the catalog
(new coarse quadkeys become partitions), then exactly the partitions the scene covers. The machinery is the
landing sensor every pipeline shares (``geoembed_assets.core.landing``)."""

import dagster as dg

from geoembed.quadkey.settings import QuadkeyProductSettings
from geoembed_assets.core.landing import LANDING_TAG, landing_sensor_name
from geoembed_assets.imagery.sensors import build_scene_landing_sensor
from geoembed_assets.quadkey.partitions import QuadkeyKeys
from geoembed_resources import ProductStorage


def build_quadkey_scene_sensor(settings: QuadkeyProductSettings, keys: QuadkeyKeys) -> dg.SensorDefinition:
    per_partition = [keys.chips] + ([keys.labels, keys.features, keys.table] if settings.labels else [])

    def refresh(context: dg.SensorEvaluationContext, storage: ProductStorage, changed: set[str],
                catalog_id: int) -> list[dg.RunRequest]:
        """One run per partition a new or changed scene covers. Before a classifier exists only the chips
        and labels are made (materialize chip_backbone and chip_classifier: features and table follow)."""
        has_model = storage.current_model_path(settings.name).exists()
        selection = per_partition if has_model else per_partition[:2]
        if not has_model and settings.labels:
            context.log.warning(f"{settings.name}: no chip classifier yet; making chips and labels only")
        return [dg.RunRequest(run_key=f"refresh:{catalog_id}:{quadkey}", asset_selection=selection,
                              partition_key=quadkey, tags={LANDING_TAG: landing_sensor_name(settings.name)})
                for quadkey in sorted(changed)]

    return build_scene_landing_sensor(settings, keys, per_partition, refresh, "a new or changed scene refreshes the "
                                      "catalog, then exactly the coarse-quadkey partitions it covers.")
