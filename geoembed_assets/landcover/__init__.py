"""The H3 land-cover product's asset graph (one per product settings file)."""

from geoembed_assets.landcover.assets import LandcoverAssets, build_landcover_product

__all__ = ["LandcoverAssets", "build_landcover_product"]
