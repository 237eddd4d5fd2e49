"""Integration: the ranking graph materialized for two development stations (and one broken one) on a real
Dagster instance and the embedded PostgreSQL; predictions merged into one table, the report opened in
Chromium, re-runs replacing rows, and the station sensor refreshing exactly what changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import chromium_browser
from geoembed.ranking.settings import RankingProductSettings, RankingTraining
from geoembed_assets.definitions import local_resources
from geoembed_assets.ranking.job import materialize_ranking_product
from geoembed_assets.ranking.partitions import RankingKeys
from geoembed_assets.ranking.state import layout_of

pytestmark = pytest.mark.integration

TRAINING = RankingTraining(epochs=8, optimizer="adam", image_size=64, backbone_width=16, hidden=[32])


def _settings(stations, name="fpe_test") -> RankingProductSettings:
    return RankingProductSettings(pipeline="ranking", name=name, stations=str(stations), variable="OPEN_WATER_PCT",
                                  annotation_variable="OPEN_WATER", model_code="RANK-TEST", training=TRAINING,
                                  min_validation_tau=0.3)


@pytest.fixture(scope="module")
def ranking_run(tmp_path_factory, dev_stations):
    root = tmp_path_factory.mktemp("ranking")
    shutil.copytree(dev_stations, root / "fpe")
    broken = root / "fpe" / "stations" / "BROKEN"
    shutil.copytree(root / "fpe" / "stations" / "S2WATER02", broken)
    (broken / "db" / "annotations.json").write_text("[{")
    settings = _settings(root / "fpe")
    with dg.instance_for_test() as instance:
        resources = local_resources(root / "data")
        summary = materialize_ranking_product(settings, instance, resources, say=lambda _: None)
        yield settings, instance, resources, summary


def _query(resources, sql: str, *params) -> pd.DataFrame:
    with resources["database"].connect(read_only=True) as conn:
        cursor = conn.execute(sql, params)
        return pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])


def test_a_broken_station_fails_alone_and_is_named(ranking_run):
    settings, instance, resources, summary = ranking_run
    assert summary.stations == ["BROKEN", "S2WATER01", "S2WATER02"]
    assert sorted(summary.results) == ["S2WATER01", "S2WATER02"]
    assert list(summary.failed) == ["BROKEN"]
    assert "station BROKEN: annotations file" in summary.failed["BROKEN"] and "not valid JSON" in summary.failed["BROKEN"]
    keys = RankingKeys(settings.name)
    assert set(instance.get_materialized_partitions(keys.report)) == {"S2WATER01", "S2WATER02"}


def test_predictions_are_one_table_with_one_row_per_image_in_parquet_and_postgres(ranking_run):
    settings, instance, resources, summary = ranking_run
    layout = layout_of(resources["storage"], settings)
    for station in ("S2WATER01", "S2WATER02"):
        images = json.loads(next(Path(settings.stations, "stations", station, "db", "imagesets").glob(
            "*/images.json")).read_text())
        table = pq.read_table(layout.predictions(station)).to_pandas()
        assert sorted(table["image_id"]) == sorted(str(r["id"]) for r in images)  # every image once, none lost
        assert table["score"].notna().all() and set(table["split"]) == {"train", "validation", "test_in", "test_out"}
        rows = _query(resources, "SELECT image_id, score, model_version FROM geoembed.ranking_predictions WHERE "
                      "product = %s AND station = %s", settings.name, station)
        assert sorted(rows["image_id"]) == sorted(table["image_id"])
        merged = rows.merge(table, on="image_id", suffixes=("_db", ""))
        assert (merged["score_db"] - merged["score"]).abs().max() < 1e-5
        assert set(rows["model_version"]) == {summary.results[station]["model_version"]}


def test_models_table_holds_each_station_models_metadata_and_lineage(ranking_run):
    settings, instance, resources, summary = ranking_run
    models = _query(resources, "SELECT * FROM geoembed.ranking_models WHERE product = %s ORDER BY station",
                    settings.name)
    assert list(models["station"]) == ["S2WATER01", "S2WATER02"]
    for _, row in models.iterrows():
        result = summary.results[row["station"]]
        assert row["model_version"] == result["model_version"] and row["model_code"] == "RANK-TEST"
        assert row["variable"] == "OPEN_WATER_PCT" and row["split_method"] == "components"
        assert row["validation_tau"] == result["validation_tau"] == row["taus"]["model"]["validation"]["tau"]
        assert row["lineage"]["dataset_version"] == row["dataset_version"]
        assert row["lineage"]["training"]["epochs"] == 8 and row["train_pairs"] > 100


def test_report_check_compares_validation_tau_with_the_floor(ranking_run):
    settings, instance, resources, summary = ranking_run
    keys = RankingKeys(settings.name)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(keys.report, "validation_tau_above_floor")])[dg.AssetCheckKey(keys.report,
                                                                                      "validation_tau_above_floor")]
    evaluation = record.event.dagster_event.event_specific_data
    tau = evaluation.metadata["validation_tau"].value
    assert evaluation.passed == (tau >= 0.3)
    for result in summary.results.values():  # the trained model ranks water; brightness does not
        assert result["validation_tau"] > result["brightness_validation_tau"]


def test_report_opens_in_chromium_with_its_figures(ranking_run):
    settings, instance, resources, summary = ranking_run
    path = summary.results["S2WATER01"]["report"]
    with chromium_browser() as browser:
        page = browser.new_page()
        page.goto(f"file://{path}")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        header = page.inner_text("table:nth-of-type(2) thead")
        page.close()
    assert len(widths) == 4 and min(widths) > 300
    assert "validation" in header and "daily_means" in header


def test_rerunning_a_station_replaces_its_rows(ranking_run):
    settings, instance, resources, summary = ranking_run
    keys = RankingKeys(settings.name)
    from geoembed_assets.definitions import build_definitions

    defs = build_definitions([settings], resources)
    before = _query(resources, "SELECT count(*) AS n FROM geoembed.ranking_predictions WHERE station = 'S2WATER01'")
    assert dg.materialize(list(defs.assets), selection=[keys.predictions, keys.report], instance=instance,
                          resources=resources, partition_key="S2WATER01").success
    after = _query(resources, "SELECT count(*) AS n FROM geoembed.ranking_predictions WHERE station = 'S2WATER01'")
    models = _query(resources, "SELECT count(*) AS n FROM geoembed.ranking_models WHERE station = 'S2WATER01'")
    assert int(after["n"][0]) == int(before["n"][0]) == 200 and int(models["n"][0]) == 1


def test_the_station_sensor_refreshes_new_stations_and_new_annotations_only(tmp_path, dev_stations):
    from geoembed_assets.core.landing import landing_sensor_name
    from geoembed_assets.definitions import build_definitions

    shutil.copytree(dev_stations, tmp_path / "fpe", ignore=shutil.ignore_patterns("S2WATER02"))
    settings = _settings(tmp_path / "fpe", "fpe_sensor")
    keys = RankingKeys(settings.name)
    with dg.instance_for_test() as instance:
        resources = local_resources(tmp_path / "data")
        defs = build_definitions([settings], resources)

        def tick(cursor):
            with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
                result = defs.get_sensor_def(landing_sensor_name(settings.name))(context)
            return result, result.cursor

        def catalog(tags):
            assert dg.materialize(list(defs.assets), selection=[keys.catalog], instance=instance, resources=resources,
                                  tags=tags).success

        result, cursor = tick(None)
        assert [r.asset_selection for r in result.run_requests] == [[keys.catalog]]
        catalog(result.run_requests[0].tags)
        result, cursor = tick(cursor)
        assert [(r.partition_key, r.asset_selection) for r in result.run_requests] == [("S2WATER01", keys.per_station)]
        shutil.copytree(dev_stations / "stations" / "S2WATER02", tmp_path / "fpe" / "stations" / "S2WATER02")
        result, cursor = tick(cursor)
        catalog(result.run_requests[0].tags)
        result, cursor = tick(cursor)
        assert [r.partition_key for r in result.run_requests] == ["S2WATER02"]  # the new station, only
        assert "S2WATER02" in instance.get_dynamic_partitions(f"{settings.name}_stations")
        annotations = next((tmp_path / "fpe" / "stations" / "S2WATER01" / "storage" / "annotations").glob("*.json"))
        pairs = json.loads(annotations.read_text())
        annotations.write_text(json.dumps(pairs + pairs[:2]))  # an annotator's new pairs
        result, cursor = tick(cursor)
        catalog(result.run_requests[0].tags)
        result, _ = tick(cursor)
        assert [r.partition_key for r in result.run_requests] == ["S2WATER01"]


def test_stations_on_s3_and_outputs_on_s3(s3, tmp_path, dev_stations):
    """Station folders under an s3:// prefix (mirrored per station) and the predictions, models and report
    written to the object store (GEOEMBED_OUTPUTS); the tables in PostgreSQL as before."""
    from conftest import BUCKET
    from geoembed_assets.definitions import build_definitions
    from geoembed_resources import ProductStorage

    station = dev_stations / "stations" / "S2WATER01"
    for path in station.rglob("*"):
        if path.is_file():
            s3["client"].upload_file(str(path), BUCKET, f"fpe/stations/S2WATER01/{path.relative_to(station)}")
    settings = _settings(f"s3://{BUCKET}/fpe", "fpe_s3")
    keys = RankingKeys(settings.name)
    with dg.instance_for_test() as instance:
        resources = local_resources(tmp_path / "data", storage=ProductStorage(root=str(tmp_path / "data"),
                                                                              outputs=f"s3://{BUCKET}/outputs"))
        defs = build_definitions([settings], resources)
        assert dg.materialize(list(defs.assets), selection=[keys.catalog], instance=instance, resources=resources).success
        assert instance.get_dynamic_partitions(f"{settings.name}_stations") == ["S2WATER01"]
        assert dg.materialize(list(defs.assets), selection=keys.per_station, instance=instance, resources=resources,
                              partition_key="S2WATER01").success
    listed = {o["Key"] for o in s3["client"].list_objects_v2(Bucket=BUCKET, Prefix="outputs/")["Contents"]}
    base = "outputs/fpe_s3/stations/S2WATER01/RANK-TEST"
    assert {f"{base}/transform/predictions.parquet", f"{base}/RANK-TEST.html",
            f"{base}/dataset/images.parquet"} <= listed
    body = s3["client"].get_object(Bucket=BUCKET, Key=f"{base}/transform/predictions.parquet")["Body"].read()
    assert pq.read_table(__import__("io").BytesIO(body)).num_rows == 200
    rows = _query(resources, "SELECT count(*) AS n FROM geoembed.ranking_predictions WHERE product = 'fpe_s3'")
    assert int(rows["n"][0]) == 200
