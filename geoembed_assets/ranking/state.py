"""The ranking product's state as the assets and the station sensor read it, through the resources."""

from __future__ import annotations

import os

from geoembed.core.sources import SourceFile
from geoembed.ranking.catalog import StationCatalog
from geoembed.ranking.layout import RankingLayout
from geoembed.ranking.settings import RankingProductSettings
from geoembed.ranking.stations import StationInputError
from geoembed_resources import ProductStorage, RasterReader


def layout_of(storage: ProductStorage, settings: RankingProductSettings) -> RankingLayout:
    return RankingLayout(storage.outputs_dir(settings.name), storage.product_dir(settings.name), settings.model_code)


def stations_dir(settings: RankingProductSettings) -> str:
    return os.path.join(settings.stations, "stations")


def station_files(raster_reader: RasterReader, settings: RankingProductSettings) -> list[SourceFile]:
    """Every file below <stations>/stations (a cheap listing: names, sizes, modification times)."""
    location = stations_dir(settings)
    if "://" not in location and not os.path.isdir(location):
        raise StationInputError(f"stations location {settings.stations!r} has no stations/ folder (the FPE layout: "
                                f"stations/<id>/db/station.json ...)")
    return raster_reader.list_location(location, "*", recursive=True)


def read_station_catalog(storage: ProductStorage, settings: RankingProductSettings) -> StationCatalog | None:
    path = layout_of(storage, settings).catalog
    return StationCatalog.model_validate(storage.read_json(path, "the station catalog")) if path.exists() else None


def known_station_files(storage: ProductStorage, settings: RankingProductSettings) -> dict[str, tuple[str, str]]:
    catalog = read_station_catalog(storage, settings)
    return catalog.files if catalog else {}
