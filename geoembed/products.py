"""Product settings files of any pipeline: ``pipeline: imagery`` is an MGRS-tile imagery product,
``pipeline: quadkey`` a quadkey chip product, ``pipeline: ranking`` per-station image ranking; a file without
``pipeline`` (or ``pipeline: landcover``) is an H3 land-cover product."""

from __future__ import annotations

import os

from geoembed.core.settings import ProductConfigError, read_settings_file
from geoembed.imagery.settings import ImageryProductSettings, load_imagery_settings
from geoembed.landcover.settings import ProductSettings, load_settings
from geoembed.quadkey.settings import QuadkeyProductSettings, load_quadkey_settings
from geoembed.ranking.settings import RankingProductSettings, load_ranking_settings

AnyProduct = ProductSettings | ImageryProductSettings | QuadkeyProductSettings | RankingProductSettings
PIPELINES = ("landcover", "imagery", "quadkey", "ranking")


def load_product(path: str | os.PathLike[str]) -> AnyProduct:
    """Read and validate a product settings file of any pipeline; errors name the file and the field."""
    pipeline = read_settings_file(path).get("pipeline", "landcover")
    if pipeline == "imagery":
        return load_imagery_settings(path)
    if pipeline == "quadkey":
        return load_quadkey_settings(path)
    if pipeline == "ranking":
        return load_ranking_settings(path)
    if pipeline == "landcover":
        return load_settings(path)
    raise ProductConfigError(f"invalid product settings in {path}: pipeline: {pipeline!r} is not one of {PIPELINES}")
