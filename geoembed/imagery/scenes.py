"""Sentinel-2 scenes: which band files make a scene of one MGRS tile on one date, found in a scene
location (band files named as ESA names them, or STAC items whose assets point at them).

Band files: ``T<tile>_<YYYYMMDD>T<HHMMSS>_<band>[_<res>m].<jp2|tif>`` anywhere under the location
(L1C names have no resolution suffix; L2A names do, and L2A has a scene classification band ``SCL``).
STAC items: ``*.json`` Items with a datetime, the tile (``s2:mgrs_tile``, the ``mgrs:`` extension or
``grid:code``), the product type, and one asset per band (keyed by band id, common name, or ``eo:bands``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from typing import Callable, Iterable

from geoembed.core.errors import InputError
from geoembed.core.grids.mgrs import TileIdError, canonical_tile_id
from geoembed.core.lineage import named_versions_version
from geoembed.core.settings import PACKAGE_PREFIX, resolve_package_path
from geoembed.core.sources import SourceFile


class SceneInputError(InputError):
    """A scene lacks bands, has bands that do not line up, or cannot be read."""


@dataclass(frozen=True)
class BandInfo:
    resolution: int  # native ground sample distance (m)
    wavelength: float  # central wavelength (µm)
    common_name: str


# Sentinel-2 MSI bands (ESA's central wavelengths for S2A, rounded) and the names STAC uses for them.
S2_BANDS: dict[str, BandInfo] = {
    "B01": BandInfo(60, 0.443, "coastal"),
    "B02": BandInfo(10, 0.490, "blue"),
    "B03": BandInfo(10, 0.560, "green"),
    "B04": BandInfo(10, 0.665, "red"),
    "B05": BandInfo(20, 0.705, "rededge1"),
    "B06": BandInfo(20, 0.740, "rededge2"),
    "B07": BandInfo(20, 0.783, "rededge3"),
    "B08": BandInfo(10, 0.842, "nir"),
    "B8A": BandInfo(20, 0.865, "nir08"),
    "B09": BandInfo(60, 0.945, "nir09"),
    "B10": BandInfo(60, 1.375, "cirrus"),
    "B11": BandInfo(20, 1.610, "swir16"),
    "B12": BandInfo(20, 2.190, "swir22"),
}
L1C_BANDS = tuple(S2_BANDS)
L2A_BANDS = tuple(b for b in S2_BANDS if b != "B10")  # L2A drops the cirrus band
MASK_BAND = "SCL"  # L2A scene classification (20 m): resampled with nearest, never blended
RGB_BANDS = ("B04", "B03", "B02")
RASTER_LEVEL = "raster"  # a scene made of any multi-band raster (see geoembed.imagery.rasters)
# SCL classes that count as cloud: 3 cloud shadow, 8 cloud medium probability, 9 high, 10 thin cirrus.
SCL_CLOUD_CLASSES = (3, 8, 9, 10)
# Processing baseline 04.00 (from 25 January 2022) adds 1000 to every DN: reflectance = (DN - 1000) / 10000.
OFFSET_BASELINE = "04.00"
OFFSET_FROM_DATE = date(2022, 1, 25)
QUANTIFICATION = 10_000

_BAND_FILE = re.compile(
    r"(?:^|/)T(?P<tile>\d{2}[C-X][A-Z]{2})_(?P<when>\d{8}T\d{6})_(?P<band>B\d[\dA]|SCL)(?:_(?P<res>\d{2})m)?"
    r"\.(?:jp2|tif|tiff)$", re.IGNORECASE)
_ALIASES = {**{b.lower(): b for b in S2_BANDS}, **{i.common_name: b for b, i in S2_BANDS.items()},
            "scl": MASK_BAND, "b8a": "B8A", "rededge": "B05", "nir08": "B8A", "swir1": "B11", "swir2": "B12"}


@dataclass(frozen=True)
class Scene:
    """One acquisition of one tile: its band files, product level and processing baseline."""

    tile: str
    acquired: datetime  # UTC
    level: str  # "L1C" or "L2A"
    bands: dict[str, str]  # band id -> location rasterio opens (the mask band too, when there is one)
    source: str  # where it was found: the band files' folder, or the STAC item
    processing_baseline: str | None = None
    file_versions: dict[str, str] = field(default_factory=dict)  # band id -> content version
    # A raster that is not Sentinel-2 (level "raster"): each band's number in its file, and how stored values
    # become values: (scale, offset, nodata or None for the file's own).
    band_index: dict[str, int] = field(default_factory=dict)
    radiometry: tuple[float, float, float | None] | None = None
    rgb: tuple[str, ...] = RGB_BANDS  # the bands of RGB thumbnails

    @property
    def date(self) -> str:
        """The partition key of the acquisition date: YYYY-MM-DD."""
        return self.acquired.date().isoformat()

    @property
    def scene_id(self) -> str:
        if self.level == RASTER_LEVEL:
            return f"{self.tile}_{self.acquired:%Y%m%d}"
        return f"S2_{self.tile}_{self.acquired:%Y%m%dT%H%M%S}_{self.level}"

    @property
    def version(self) -> str:
        """The scene's data version: the content versions of its band files."""
        if not self.file_versions:
            raise ValueError(f"scene {self.scene_id} has no file versions yet")
        return named_versions_version(self.file_versions)

    @property
    def dn_offset(self) -> int:
        """What to add to a DN before dividing by 10,000: -1000 from processing baseline 04.00 on (0 for other
        rasters: their values are made DNs of offset 0 as they are read)."""
        if self.level == RASTER_LEVEL:
            return 0
        if self.processing_baseline:
            return -1000 if self.processing_baseline >= OFFSET_BASELINE else 0
        return -1000 if self.acquired.date() >= OFFSET_FROM_DATE else 0

    @property
    def has_cloud_mask(self) -> bool:
        return MASK_BAND in self.bands

    def with_versions(self, version_of: Callable[[str], str]) -> Scene:
        return replace(self, file_versions={b: version_of(loc) for b, loc in sorted(self.bands.items())})

    def check_bands(self, wanted: Iterable[str]) -> None:
        missing = [b for b in wanted if b not in self.bands]
        if missing:
            raise SceneInputError(f"scene {self.scene_id} ({self.source}) lacks bands {missing}; it has "
                                  f"{sorted(self.bands)}")


def default_bands(level: str) -> tuple[str, ...]:
    return L2A_BANDS if level == "L2A" else L1C_BANDS


@dataclass
class SceneListing:
    """What a scene location holds: scenes by (tile, date), and what could not be used, with why."""

    scenes: dict[tuple[str, str], Scene] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # file or item -> reason
    superseded: list[str] = field(default_factory=list)  # other acquisitions of a tile on the same date

    def add(self, scene: Scene) -> None:
        key = (scene.tile, scene.date)
        old = self.scenes.get(key)
        if old is None:
            self.scenes[key] = scene
            return
        # Two acquisitions of a tile on one date (overlapping orbits): the later one, then L2A, wins.
        keep, drop = sorted([old, scene], key=lambda s: (s.acquired, s.level == "L2A", s.source), reverse=True)
        self.scenes[key] = keep
        self.superseded.append(drop.scene_id)

    def for_tiles(self, tiles: Iterable[str] | None) -> list[Scene]:
        wanted = None if tiles is None else set(tiles)
        return [s for k, s in sorted(self.scenes.items()) if wanted is None or s.tile in wanted]


def is_scene_file(name: str) -> bool:
    """A band file or a STAC item (what a scene location's listing keeps)."""
    return bool(_BAND_FILE.search(name)) or name.lower().endswith(".json")


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text.upper(), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)


def find_scenes(files: list[SourceFile], read_text: Callable[[str], str]) -> SceneListing:
    """The scenes among a location's files: band files grouped by tile and acquisition time, and STAC
    items (``read_text`` reads an item's JSON). Files that are neither are ignored; items or band files
    that cannot be used are listed in ``rejected`` with the reason."""
    listing = SceneListing()
    groups: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}
    folders: dict[tuple[str, str], str] = {}
    level_hint: dict[tuple[str, str], str] = {}
    for f in files:
        match = _BAND_FILE.search(f.name)
        if match:
            key = (match["tile"].upper(), match["when"].upper())
            band = match["band"].upper()
            resolution = int(match["res"]) if match["res"] else S2_BANDS.get(band, BandInfo(20, 0, "")).resolution
            previous = groups.setdefault(key, {}).get(band)
            if previous is None or resolution < previous[0]:  # L2A ships 10/20/60 m copies: keep the finest
                groups[key][band] = (resolution, f.location)
            folders[key] = f.location.rsplit("/", 1)[0]
            if match["res"] or band == MASK_BAND or "MSIL2A" in f.name.upper():
                level_hint[key] = "L2A"
            continue
        if f.name.lower().endswith(".json"):
            try:
                scene = scene_from_stac(json.loads(read_text(f.location)), f.location)
            except (SceneInputError, TileIdError) as exc:
                listing.rejected[f.name] = str(exc)
                continue
            except (ValueError, KeyError, TypeError) as exc:
                listing.rejected[f.name] = f"not a usable STAC item: {exc}"
                continue
            if scene is not None:
                listing.add(scene)
    for (tile, when), bands in groups.items():
        try:
            canonical_tile_id(tile)
        except TileIdError as exc:
            listing.rejected[f"T{tile}_{when}"] = str(exc)
            continue
        level = level_hint.get((tile, when), "L1C")
        listing.add(Scene(tile, _parse_time(when), level, {b: loc for b, (_, loc) in sorted(bands.items())},
                          folders[(tile, when)]))
    return listing


def scene_from_stac(item: dict, location: str) -> Scene | None:
    """A scene from a STAC Item (None for JSON that is not a STAC Item, e.g. a collection)."""
    if not isinstance(item, dict) or item.get("type") != "Feature" or "stac_version" not in item:
        return None
    import pystac

    stac = pystac.Item.from_dict(item, href=location, preserve_dict=True)
    props = stac.properties
    tile = _stac_tile(props, stac.id)
    when = stac.datetime or (pystac.utils.str_to_datetime(props["start_datetime"]) if props.get("start_datetime") else None)
    if when is None:
        raise SceneInputError(f"STAC item {stac.id!r} ({location}) has no datetime")
    product_type = str(props.get("s2:product_type") or props.get("processing:level") or "")
    level = "L2A" if "2A" in product_type.upper() else "L1C"
    bands: dict[str, str] = {}
    for key, asset in stac.assets.items():
        band = _asset_band(key, asset.to_dict())
        if band and band not in bands:
            # package:<module>/<path> points into an installed Python package (data installed from PyPI).
            href = resolve_package_path(asset.href, f"STAC asset {key!r}") if asset.href.startswith(PACKAGE_PREFIX) \
                else asset.get_absolute_href() or asset.href
            bands[band] = href
    if not bands:
        raise SceneInputError(f"STAC item {stac.id!r} ({location}) has no Sentinel-2 band assets")
    if MASK_BAND in bands:
        level = "L2A"
    baseline = props.get("s2:processing_baseline") or props.get("processing:version")
    return Scene(tile, when.astimezone(timezone.utc), level, bands, location, str(baseline) if baseline else None)


def _stac_tile(props: dict, item_id: str) -> str:
    if props.get("s2:mgrs_tile"):
        return canonical_tile_id(props["s2:mgrs_tile"])
    if props.get("mgrs:utm_zone") and props.get("mgrs:latitude_band") and props.get("mgrs:grid_square"):
        return canonical_tile_id(f"{int(props['mgrs:utm_zone']):02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}")
    code = str(props.get("grid:code", ""))
    if code.upper().startswith("MGRS-"):
        return canonical_tile_id(code[5:])
    raise SceneInputError(f"STAC item {item_id!r} names no MGRS tile (s2:mgrs_tile, mgrs:* or grid:code)")


def _asset_band(key: str, asset: dict) -> str | None:
    for band in asset.get("eo:bands", []) or asset.get("bands", []) or []:
        name = str(band.get("name", "")).lower()
        common = str(band.get("common_name", "")).lower()
        for candidate in (name, common):
            if candidate in _ALIASES:
                return _ALIASES[candidate]
    return _ALIASES.get(key.lower())
