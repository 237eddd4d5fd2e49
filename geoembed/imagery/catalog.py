"""The scene catalog: which tiles an imagery product covers and which scene (band files, versions) each
tile has on each date. ``scene_catalog`` writes it; every later asset reads it (one writer, one reader
type), and the scene sensor compares it with the previous one to refresh exactly what changed."""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, ConfigDict

from geoembed.core.grids.mgrs import published_tile
from geoembed.core.sources import SourceFile
from geoembed.imagery.aoi import tiles_for_geojson
from geoembed.imagery.scenes import Scene, SceneInputError, default_bands, find_scenes
from geoembed.imagery.settings import ImageryProductSettings


class SceneNotFoundError(LookupError):
    """No scene of a tile on a date is in the catalog."""


class SceneCatalog(BaseModel):
    model_config = ConfigDict(extra="ignore")

    settings: dict
    tiles: list[str]
    scenes: list[Scene]
    rejected: dict[str, str] = {}  # file or item -> why it is not used
    superseded: list[str] = []  # other acquisitions of a tile on a date that has a scene
    outside: list[str] = []  # scenes of tiles the product does not cover
    files: dict[str, tuple[str, str]] = {}  # every file of the scene location: (fingerprint, content version)

    def scene(self, tile: str, date: str) -> Scene | None:
        return next((s for s in self.scenes if s.tile == tile and s.date == date), None)

    def require(self, tile: str, date: str) -> Scene:
        found = self.scene(tile, date)
        if found is None:
            raise SceneNotFoundError(f"no scene of tile {tile} on {date} in the catalog")
        return found

    @property
    def dates(self) -> list[str]:
        return sorted({s.date for s in self.scenes})

    def dates_of(self, tile: str) -> list[str]:
        return sorted(s.date for s in self.scenes if s.tile == tile)

    def versions(self) -> dict[str, str]:
        """{"tile|date": scene version}."""
        return {f"{s.tile}|{s.date}": s.version for s in self.scenes}

    def changed_since(self, previous: SceneCatalog | None) -> list[tuple[str, str]]:
        """(tile, date) of scenes that are new, or whose band files changed, since ``previous``."""
        before = previous.versions() if previous is not None and previous.settings == self.settings else {}
        return sorted((s.tile, s.date) for s in self.scenes if before.get(f"{s.tile}|{s.date}") != s.version)

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def product_tiles(settings: ImageryProductSettings, found: list[Scene]) -> list[str]:
    """The tiles a product covers: its tile list, the tiles its area of interest touches, or (neither
    given) every tile the scenes cover. Each must be a published Sentinel-2 tile."""
    if settings.tiles:
        tiles = list(settings.tiles)
    elif settings.aoi:
        tiles = tiles_for_geojson(settings.aoi)
    else:
        tiles = sorted({s.tile for s in found})
    for tile in tiles:
        published_tile(tile)
    return tiles


def build_catalog(
    settings: ImageryProductSettings,
    files: list[SourceFile],
    read_text: Callable[[str], str],
    version_of: Callable[[str], str],
) -> SceneCatalog:
    """The catalog of a scene location's files (versioned, see ``sources.with_versions``): scenes of the
    product's tiles, each checked to have the product's bands, with its band files' content versions."""
    listing = find_scenes(files, read_text)
    found = list(listing.scenes.values())
    tiles = product_tiles(settings, found)
    known = {f.location: f.version for f in files if f.version}
    scenes, rejected, outside = [], dict(listing.rejected), []
    for scene in listing.for_tiles(None):
        if scene.tile not in tiles:
            outside.append(scene.scene_id)
            continue
        try:
            scene.check_bands(settings.bands or default_bands(scene.level))
        except SceneInputError as exc:
            rejected[scene.scene_id] = str(exc)
            continue
        scenes.append(scene.with_versions(lambda location: known.get(location) or version_of(location)))
    return SceneCatalog(settings=settings.model_dump(mode="json"), tiles=tiles, scenes=scenes, rejected=rejected,
                        superseded=listing.superseded, outside=outside,
                        files={f.name: (f.fingerprint, f.version) for f in files})
