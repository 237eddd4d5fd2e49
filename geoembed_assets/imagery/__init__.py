"""The MGRS-tile imagery product's asset graph (one per imagery product settings file)."""

from geoembed_assets.imagery.assets import ImageryAssets, build_imagery_product

__all__ = ["ImageryAssets", "build_imagery_product"]
