"""Station folders in the FPE development layout (the seed's ``db/seeds/development/data``), read into
typed tables: a station's images with their observed value, and its annotated pairs.

    stations/<station>/db/station.json                      id, name, timezone...
    stations/<station>/db/imagesets/<uuid>/images.json      [{id, filename, timestamp, ...}]
    stations/<station>/db/datasets/<id>/series/<VAR>.json   [{timestamp, value}] (optional: the observed series)
    stations/<station>/db/annotations.json                  [{id, variable, flag, url, ...}]
    stations/<station>/storage/imagesets/<uuid>/images/<filename>
    stations/<station>/storage/annotations/<uuid>.json      [{left: {imageId}, right: {imageId}, rank}]

Every problem is a ``StationInputError`` naming the station and the file; one station's problem never
touches another's.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from geoembed.core.errors import InputError

RANKS = {"LEFT": 1, "RIGHT": -1, "SAME": 0}  # LEFT: the left image shows more of the variable


class StationInputError(InputError):
    """A station folder cannot be read (missing or malformed JSON, unknown images, undecodable files)."""


@dataclass(frozen=True)
class Station:
    key: str  # the folder name: the partition key
    id: str  # station.json's id
    name: str
    timezone: str


@dataclass
class StationData:
    """What a station folder holds, as tables."""

    station: Station
    images: pd.DataFrame  # image_id, imageset_id, filename, path (relative to the station folder), timestamp
    #                       (UTC), value (NaN: none)
    pairs: pd.DataFrame  # annotation_id, pair, left_id, right_id, label (1 left higher, -1 lower, 0 tie)
    version: str  # content version of the station's JSON files and its image listing
    series_points: int


def station_keys(root: str | os.PathLike[str]) -> list[str]:
    """The station folders under ``<root>/stations`` (each holding db/station.json), sorted."""
    folder = Path(root) / "stations"
    if not folder.is_dir():
        raise StationInputError(f"stations location {str(folder)!r} is not a directory (or does not exist)")
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and (p / "db" / "station.json").is_file())


def _json(path: Path, station: str, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StationInputError(f"station {station}: {what} {str(path)!r} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StationInputError(f"station {station}: {what} {str(path)!r} is not valid JSON ({exc})") from None


def _records(value, path: Path, station: str, what: str, fields: tuple[str, ...]) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise StationInputError(f"station {station}: {what} {str(path)!r} must be a list of objects")
    for i, record in enumerate(value):
        missing = [f for f in fields if f not in record]
        if missing:
            raise StationInputError(f"station {station}: {what} {str(path)!r}, entry {i}: missing {missing}")
    return value


def _utc(values, path: Path, station: str, what: str) -> pd.Series:
    try:
        return pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise StationInputError(f"station {station}: {what} {str(path)!r} has a timestamp that is not ISO 8601 "
                                f"({exc})") from None


def interpolate_values(image_times: np.ndarray, series_times: np.ndarray, series_values: np.ndarray,
                       max_gap_minutes: float) -> np.ndarray:
    """The observed value at each image time, linearly interpolated between the series points around it,
    NaN where the farther of the two is more than ``max_gap_minutes`` away or the image is outside the
    series (rank-dataset.R; an image at a series point takes that point's value)."""
    out = np.full(len(image_times), np.nan)
    if len(series_times) == 0:
        return out
    t = np.asarray(series_times, dtype="datetime64[s]").astype(np.int64)
    order = np.argsort(t)
    t, v = t[order], np.asarray(series_values, dtype=float)[order]
    x = np.asarray(image_times, dtype="datetime64[s]").astype(np.int64)
    after = np.searchsorted(t, x, side="left")
    exact = (after < len(t)) & (t[np.minimum(after, len(t) - 1)] == x)
    inside = (after > 0) & (after < len(t))
    gap = np.full(len(x), np.inf)
    gap[inside] = np.maximum(x[inside] - t[after[inside] - 1], t[after[inside]] - x[inside]) / 60.0
    gap[exact] = 0.0
    keep = gap <= max_gap_minutes
    out[keep] = np.interp(x[keep], t, v)
    return out


def annotation_file(folder: Path, record: dict) -> Path:
    """The local file of an annotation record: storage/annotations/<the url's file name>, or <id>.json."""
    url = str(record.get("url") or "")
    name = PurePosixPath(urlparse(url).path).name if url else f"{record['id']}.json"
    return folder / "storage" / "annotations" / name


def station_folder(root: str | os.PathLike[str], key: str) -> Path:
    return Path(root) / "stations" / key


def read_station(root: str | os.PathLike[str], key: str, variable: str, annotation_variable: str,
                 max_gap_minutes: float = 65) -> StationData:
    """One station folder as tables; raises ``StationInputError`` naming the station and the file."""
    folder = station_folder(root, key)
    digest = hashlib.sha256()

    def load(path: Path, what: str):
        value = _json(path, key, what)
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
        return value

    meta_path = folder / "db" / "station.json"
    meta = load(meta_path, "station file")
    if not isinstance(meta, dict) or "id" not in meta:
        raise StationInputError(f"station {key}: station file {str(meta_path)!r} must be an object with an 'id'")
    station = Station(key, str(meta["id"]), str(meta.get("name") or key), str(meta.get("timezone") or "UTC"))
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(station.timezone)
    except Exception:  # noqa: BLE001 - any failure means the name is unusable
        raise StationInputError(f"station {key}: station file {str(meta_path)!r} names an unknown timezone "
                                f"{station.timezone!r}") from None

    frames = []
    sets_dir = folder / "db" / "imagesets"
    for set_dir in sorted(p for p in sets_dir.iterdir() if p.is_dir()) if sets_dir.is_dir() else []:
        path = set_dir / "images.json"
        records = _records(load(path, "images file"), path, key, "images file", ("id", "filename", "timestamp"))
        images_dir = folder / "storage" / "imagesets" / set_dir.name / "images"
        frame = pd.DataFrame({
            "image_id": [str(r["id"]) for r in records], "imageset_id": set_dir.name,
            "filename": [str(r["filename"]) for r in records],
            "timestamp": _utc([r["timestamp"] for r in records], path, key, "images file"),
        })
        frame["path"] = [str((images_dir / f).relative_to(folder)) for f in frame["filename"]]
        missing = [str(folder / p) for p in frame["path"] if not (folder / p).is_file()]
        if missing:
            raise StationInputError(f"station {key}: {len(missing)} images listed in {str(path)!r} are not in "
                                    f"{str(images_dir)!r}, e.g. {missing[0]!r}")
        for p in frame["path"]:
            digest.update(f"{p}:{(folder / p).stat().st_size}".encode())
        frames.append(frame)
    if not frames:
        raise StationInputError(f"station {key}: no image sets in {str(sets_dir)!r} (db/imagesets/<uuid>/images.json)")
    images = pd.concat(frames, ignore_index=True)
    duplicated = images["image_id"][images["image_id"].duplicated()]
    if len(duplicated):
        raise StationInputError(f"station {key}: image id {duplicated.iloc[0]!r} is listed twice in {str(sets_dir)!r}")

    series_times, series_values = [], []
    datasets_dir = folder / "db" / "datasets"
    for path in sorted(datasets_dir.glob(f"*/series/{variable}.json")) if datasets_dir.is_dir() else []:
        records = [r for r in _records(load(path, "series file"), path, key, "series file", ("timestamp",))
                   if r.get("value") is not None]
        series_times.append(_utc([r["timestamp"] for r in records], path, key, "series file"))
        series_values.append(np.array([float(r["value"]) for r in records]))
    if series_times:
        series = pd.DataFrame({"t": pd.concat(series_times, ignore_index=True), "v": np.concatenate(series_values)})
        series = series.groupby("t", as_index=False)["v"].mean()  # several datasets at one time: their mean
        images["value"] = interpolate_values(images["timestamp"].dt.tz_localize(None).to_numpy(),
                                             series["t"].dt.tz_localize(None).to_numpy(), series["v"].to_numpy(),
                                             max_gap_minutes)
    else:
        series = pd.DataFrame({"t": [], "v": []})
        images["value"] = np.nan

    pairs = []
    annotations_path = folder / "db" / "annotations.json"
    if annotations_path.exists():
        records = _records(load(annotations_path, "annotations file"), annotations_path, key, "annotations file",
                           ("id",))
        for record in records:
            if record.get("flag") or record.get("variable", annotation_variable) != annotation_variable:
                continue
            path = annotation_file(folder, record)
            entries = _records(load(path, "annotation file"), path, key, "annotation file", ("left", "right", "rank"))
            for i, entry in enumerate(entries):
                try:
                    left, right = str(entry["left"]["imageId"]), str(entry["right"]["imageId"])
                    label = RANKS[str(entry["rank"]).upper()]
                except (KeyError, TypeError):
                    raise StationInputError(f"station {key}: annotation file {str(path)!r}, pair {i}: needs "
                                            f"left.imageId, right.imageId and a rank in {list(RANKS)}") from None
                pairs.append((str(record["id"]), i, left, right, label))
    pairs = pd.DataFrame(pairs, columns=["annotation_id", "pair", "left_id", "right_id", "label"])
    known = set(images["image_id"])
    unknown = sorted((set(pairs["left_id"]) | set(pairs["right_id"])) - known)
    if unknown:
        raise StationInputError(f"station {key}: annotations in {str(folder / 'storage' / 'annotations')!r} name "
                                f"{len(unknown)} images that no images.json lists, e.g. {unknown[:3]}")
    return StationData(station, images, pairs, digest.hexdigest()[:16], len(series))
