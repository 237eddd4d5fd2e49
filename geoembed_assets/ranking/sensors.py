"""The ranking product's station sensor: a new station folder, or new annotations, images or observations
in one, refreshes the station catalog (new stations become partitions), then runs dataset, model,
predictions and report of exactly the stations that changed. The machinery is the landing sensor every
pipeline shares (``geoembed_assets.core.landing``)."""

import dagster as dg

from geoembed.ranking.settings import RankingProductSettings
from geoembed_assets.core.landing import LANDING_TAG, LandingSensorSpec, build_landing_sensor, landing_sensor_name
from geoembed_assets.ranking.partitions import RankingKeys
from geoembed_assets.ranking.state import known_station_files, station_files
from geoembed_resources import ProductStorage


def build_station_sensor(settings: RankingProductSettings, keys: RankingKeys) -> dg.SensorDefinition:
    def refresh(context: dg.SensorEvaluationContext, storage: ProductStorage, changed: set[str],
                catalog_id: int) -> list[dg.RunRequest]:
        """One run per new or changed station: its dataset, model, predictions and report."""
        return [dg.RunRequest(run_key=f"refresh:{catalog_id}:{station}", asset_selection=keys.per_station,
                              partition_key=station, tags={LANDING_TAG: landing_sensor_name(settings.name)})
                for station in sorted(changed)]

    return build_landing_sensor(LandingSensorSpec(
        product=settings.name,
        location=settings.stations,
        minimum_interval_seconds=settings.station_check_seconds,
        source_key=keys.source,
        scan_key=keys.catalog,
        changed_metadata_key="changed_stations",
        targets=tuple(keys.per_station),
        list_files=lambda raster_reader: station_files(raster_reader, settings),
        known_files=lambda storage: known_station_files(storage, settings),
        refresh=refresh,
        description=f"Watches {settings.stations} for station folders: a new station, or new annotations, images "
                    "or observations of one, refreshes the station catalog, then that station's dataset, model, "
                    "predictions and report.",
    ))
