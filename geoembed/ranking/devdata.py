"""Development station folders made from real Sentinel-2 imagery, in the FPE layout (``stations.py``), so
the ranking pipeline trains on something real where no stream-camera photos can be installed.

- **Stations**: places on the scene whose surroundings are partly open water (NDWI > 0 on 15-55 % of a
  window), as far apart as the scene allows.
- **Images**: RGB JPEGs of ``image_px`` pixels (10 m), each cut at a random offset of up to ``jitter_px``
  from the station, so the share of water in view changes from image to image, as the water level
  does in a camera's view. Each gets a documented timestamp (a random time of a year at the station's
  timezone, ``night_share`` of them at night) and an illumination for that hour (night images are dark).
- **Observed series**: the open-water percentage of each image, measured from its green and near-infrared
  bands (NDWI > 0); the model only ever sees red, green and blue, so it has to learn to see water.
- **Annotations**: of the earliest ``annotated_share`` of the images (the later ones are the out-of-range
  test) and ``session_image_share`` of those, in sessions of ``images_per_session`` images (any hour: the training filters drop the
  night ones), ``pairs_per_session`` random pairs each, ranked by the series with this noise model:
  a difference of at most ``tie_tolerance`` percentage points is a tie (SAME), and ``flip_share`` of the
  other pairs have their order flipped.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import rasterio
from PIL import Image
from pyproj import Transformer

from geoembed.core.errors import InputError

BANDS = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
VARIABLE, ANNOTATION_VARIABLE = "OPEN_WATER_PCT", "OPEN_WATER"


class DevelopmentDataError(InputError):
    """The scene cannot make development stations (missing bands, too little water)."""


@dataclass(frozen=True)
class DevelopmentSpec:
    stations: int = 3
    images_per_station: int = 300
    image_px: int = 64
    jitter_px: int = 64
    night_share: float = 0.25
    images_per_session: int = 6
    pairs_per_session: int = 12
    session_image_share: float = 0.8  # of the images in the annotated period, the share annotators saw
    tie_tolerance: float = 2.0  # percentage points of open water
    flip_share: float = 0.1
    annotated_share: float = 0.75  # only the earliest images are annotated: the rest are the out-of-range test
    year: int = 2017
    timezone: str = "Europe/Berlin"
    seed: int = 0


def scene_band_files(folder: str | Path) -> dict[str, str]:
    """The blue, green, red and near-infrared band files (…_B02/B03/B04/B08.jp2 or .tif) of one scene folder."""
    found = {}
    for name, band in BANDS.items():
        files = sorted(p for p in Path(folder).glob(f"*_{band}.*") if p.suffix.lower() in (".jp2", ".tif", ".tiff"))
        if not files:
            raise DevelopmentDataError(f"scene folder {str(folder)!r} has no {band} band file (*_{band}.jp2 or .tif)")
        found[name] = str(files[0])
    return found


def open_water(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Open water where the NDWI (green - NIR) / (green + NIR) is above 0 (McFeeters 1996)."""
    g, n = green.astype(np.float32), nir.astype(np.float32)
    return (g - n) > 0  # same sign as the NDWI; no division by a zero sum


def station_windows(water: np.ndarray, view: int, count: int, low: float = 0.15, high: float = 0.55) -> list[tuple[int, int]]:
    """Top-left corners of up to ``count`` non-overlapping ``view`` x ``view`` windows whose open-water share
    lies in [low, high], nearest the middle of that range first."""
    step = max(1, view // 4)
    candidates = []
    for row in range(0, water.shape[0] - view + 1, step):
        for col in range(0, water.shape[1] - view + 1, step):
            share = float(water[row : row + view, col : col + view].mean())
            if low <= share <= high:
                candidates.append((abs(share - (low + high) / 2), row, col))
    chosen: list[tuple[int, int]] = []
    for _, row, col in sorted(candidates):
        if all(abs(row - r) >= view or abs(col - c) >= view for r, c in chosen):
            chosen.append((row, col))
        if len(chosen) == count:
            break
    return chosen


def rgb_image(red: np.ndarray, green: np.ndarray, blue: np.ndarray, illumination: float) -> np.ndarray:
    """8-bit RGB of top-of-atmosphere reflectance (digital number / 10,000), scaled by ``illumination``."""
    rgb = np.stack([red, green, blue], axis=-1).astype(np.float32) / 10_000.0 * illumination
    return (np.clip(rgb / 0.25, 0, 1) ** (1 / 2.2) * 255).round().astype(np.uint8)


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)), version=4))


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def build_development_stations(scene_folder: str | Path, out: str | Path, spec: DevelopmentSpec = DevelopmentSpec()
                               ) -> list[str]:
    """Write ``spec.stations`` station folders under ``<out>/stations`` from one Sentinel-2 scene folder;
    returns their keys. Existing station folders of the same names are replaced."""
    files = scene_band_files(scene_folder)
    bands = {}
    for name, path in files.items():
        with rasterio.open(path) as src:
            bands[name] = src.read(1)
            transform, crs = src.transform, src.crs
    water = open_water(bands["green"], bands["nir"])
    view = spec.image_px + 2 * spec.jitter_px
    windows = station_windows(water, view, spec.stations)
    if len(windows) < spec.stations:
        raise DevelopmentDataError(f"scene folder {str(scene_folder)!r}: only {len(windows)} places with 15-55 % open "
                                   f"water in a {view} px window; {spec.stations} stations were asked for")
    rng = np.random.default_rng(spec.seed)
    zone = ZoneInfo(spec.timezone)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    scene_name = Path(files["red"]).name.rsplit("_", 1)[0]
    keys = []
    for s, (row, col) in enumerate(windows):
        key = f"S2WATER{s + 1:02d}"
        folder = Path(out) / "stations" / key
        if folder.exists():
            shutil.rmtree(folder)
        centre_x, centre_y = transform * (col + view / 2, row + view / 2)
        lon, lat = to_lonlat.transform(centre_x, centre_y)
        name = f"Open water {s + 1} ({scene_name})"
        _write(folder / "db" / "station.json", {
            "id": s + 1, "name": name, "timezone": spec.timezone, "latitude": round(lat, 6), "longitude": round(lon, 6),
            "waterbody_type": "lake", "status": "ACTIVE",
            "description": f"geoembed development station: {spec.image_px} px RGB chips of Sentinel-2 scene "
                           f"{scene_name} around pixel ({row + view // 2}, {col + view // 2}); observed "
                           f"{VARIABLE} = open-water share (NDWI > 0) of each chip"})
        imageset, dataset = _uuid(rng), _uuid(rng)
        start = datetime(spec.year, 1, 1, tzinfo=zone)
        minutes = np.sort(rng.integers(0, 365 * 24 * 60, spec.images_per_station))
        images, series = [], []
        image_dir = folder / "storage" / "imagesets" / imageset / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        for i, minute in enumerate(minutes):
            local = start + timedelta(minutes=int(minute))
            if rng.random() < spec.night_share:  # at night: the same day, between 21:00 and 04:59
                local = local.replace(hour=int(rng.choice([21, 22, 23, 0, 1, 2, 3, 4])))
            elif not 7 <= local.hour <= 18:
                local = local.replace(hour=int(rng.integers(7, 19)))
            illumination = rng.uniform(0.7, 1.3) if 7 <= local.hour <= 18 else rng.uniform(0.05, 0.2)
            dr, dc = rng.integers(0, 2 * spec.jitter_px + 1, 2)
            r0, c0 = row + int(dr), col + int(dc)
            crop = (slice(r0, r0 + spec.image_px), slice(c0, c0 + spec.image_px))
            value = round(100.0 * float(water[crop].mean()), 3)
            filename = f"{name.split(' (')[0]}__{local:%Y-%m-%d__%H-%M-%S}.jpg"
            Image.fromarray(rgb_image(bands["red"][crop], bands["green"][crop], bands["blue"][crop], illumination)
                            ).save(image_dir / filename, quality=92)
            stamp = local.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
            images.append({"id": s * 100_000 + i + 1, "imageset_id": imageset, "filename": filename, "timestamp": stamp,
                           "full_url": f"https://{{STORAGE_BUCKET}}/imagesets/{imageset}/images/{filename}",
                           "status": "DONE", "geoembed_window": {"scene": scene_name, "row": r0, "col": c0,
                                                                 "size": spec.image_px}})
            series.append({"timestamp": stamp, "value": value})
        _write(folder / "db" / "imagesets" / imageset / "images.json", images)
        _write(folder / "db" / "imagesets" / imageset / "imageset.json",
               {"id": imageset, "station_id": s + 1, "status": "DONE", "n_images": len(images)})
        _write(folder / "db" / "datasets" / dataset / "dataset.json",
               {"id": dataset, "station_id": s + 1, "status": "DONE", "source": "NDWI of Sentinel-2 B03 and B08"})
        _write(folder / "db" / "datasets" / dataset / "series" / f"{VARIABLE}.json", series)
        values = {img["id"]: v["value"] for img, v in zip(images, series)}
        annotated = images[: max(2, int(round(spec.annotated_share * len(images))))]  # images are in time order
        seen = rng.permutation([img["id"] for img in annotated])
        order = seen[: max(2, int(round(spec.session_image_share * len(seen))))]
        annotations = []
        for first in range(0, len(order), spec.images_per_session):
            session = order[first : first + spec.images_per_session]
            if len(session) < 2:
                continue
            pairs = []
            for _ in range(spec.pairs_per_session):
                a, b = rng.choice(session, 2, replace=False)
                difference = values[int(a)] - values[int(b)]
                rank = "SAME" if abs(difference) <= spec.tie_tolerance else ("LEFT" if difference > 0 else "RIGHT")
                if rank != "SAME" and rng.random() < spec.flip_share:
                    rank = "RIGHT" if rank == "LEFT" else "LEFT"
                pairs.append({"left": {"imageId": int(a), "attributes": []},
                              "right": {"imageId": int(b), "attributes": []}, "rank": rank})
            annotation = _uuid(rng)
            _write(folder / "storage" / "annotations" / f"{annotation}.json", pairs)
            annotations.append({"id": annotation, "station_id": s + 1, "variable": ANNOTATION_VARIABLE, "flag": False,
                                "n": len(pairs), "duration_sec": 60 + 5 * len(pairs),
                                "url": f"https://{{STORAGE_BUCKET}}/annotations/{annotation}.json"})
        _write(folder / "db" / "annotations.json", annotations)
        keys.append(key)
    (Path(out) / "README.md").write_text(
        "# geoembed development stations\n\nMade by `geoembed stations-from-scenes` from the real Sentinel-2 scene "
        f"`{scene_name}` ({scene_folder}).\n\n" + (__doc__ or "") + f"\n\nSettings: `{json.dumps(asdict(spec))}`\n")
    return keys
