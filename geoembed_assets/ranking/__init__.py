"""The station ranking product's asset graph (one per ranking product settings file)."""

from geoembed_assets.ranking.assets import RankingAssets, build_ranking_product

__all__ = ["RankingAssets", "build_ranking_product"]
