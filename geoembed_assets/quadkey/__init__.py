"""The quadkey chip product's asset graph (one per quadkey product settings file)."""

from geoembed_assets.quadkey.assets import QuadkeyAssets, build_quadkey_product

__all__ = ["QuadkeyAssets", "build_quadkey_product"]
