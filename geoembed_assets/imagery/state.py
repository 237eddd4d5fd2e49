"""The imagery product's state as the assets and the scene sensor read it, through the resources: where
its outputs are, its scene catalog, and the scene location's listing."""

from __future__ import annotations

from geoembed.core.sources import SourceFile
from geoembed.imagery.catalog import SceneCatalog
from geoembed.imagery.layout import ImageryLayout
from geoembed.imagery.rasters import is_raster_file
from geoembed.imagery.scenes import is_scene_file
from geoembed.imagery.settings import ImageryProductSettings
from geoembed_resources import ProductStorage, RasterReader


def layout_of(storage: ProductStorage, product: str) -> ImageryLayout:
    return ImageryLayout(storage.outputs_dir(product), storage.product_dir(product))


def read_catalog(storage: ProductStorage, product: str) -> SceneCatalog:
    layout = layout_of(storage, product)
    return SceneCatalog.model_validate(storage.read_json(layout.catalog, f"the scene catalog of {product!r}"))


def known_scene_files(storage: ProductStorage, product: str) -> dict[str, tuple[str, str]]:
    """{file: (fingerprint, content version)} as the last catalog saw them (empty before one)."""
    return read_catalog(storage, product).files if layout_of(storage, product).catalog.exists() else {}


def scene_files(raster_reader: RasterReader, settings: ImageryProductSettings) -> list[SourceFile]:
    """The scene location's band files and STAC items, or a rasters location's raster files (a cheap
    listing, no file read)."""
    rasters = getattr(settings, "rasters", None)
    if rasters is not None:
        return [f for f in raster_reader.list_location(rasters.path, "*", recursive=True)
                if is_raster_file(f.name, rasters)]
    return [f for f in raster_reader.list_location(settings.scenes_location, "*", recursive=True)
            if is_scene_file(f.name)]
