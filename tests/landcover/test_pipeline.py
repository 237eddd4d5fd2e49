"""Integration: materialize the real asset graph on real data with a real Dagster instance, then
read the outputs with their real clients (xarray + xdggs) and check lineage and staleness."""

import json
import subprocess
import sys

import dagster as dg
import numpy as np
import pytest
import icechunk
import xarray as xr
import xdggs  # noqa: F401
from dagster._core.definitions.data_version import StaleStatus, extract_data_version_from_entry
from dagster._utils.test.data_versions import get_stale_status_resolver
from rasterio.transform import from_origin

from conftest import REPO, write_raster
from geoembed.core.grids.h3 import region_cells
from geoembed.core.rasters import RasterInputError
from geoembed.landcover.settings import load_settings, settings_from_mapping
from geoembed.core.lineage import decode_version
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.landcover.job import materialize_product
from geoembed_resources import InferenceDevice

pytestmark = pytest.mark.integration


def _resources(root) -> dict:
    return local_resources(root, inference_device=InferenceDevice(device="cpu", batch_size=512))


def _steps(name: str, steps: int) -> dict:
    return {"ops": {f"{name}__embedding_model": {"config": {"steps": steps, "batch_size": 64}}}}


def _materialized(tmp_path_factory, product: str, data: list[str], **changes):
    """A product materialized once (40 training steps) in a fresh instance: (settings, instance, resources,
    summary). Skips when its real data is absent."""
    for name in data:
        if not (REPO.parent / "shared" / "data" / name).exists():
            pytest.skip(f"real data {name} is absent")
    root = tmp_path_factory.mktemp(product)
    settings = load_settings(REPO / "products" / f"{product}.yaml").model_copy(update=changes)
    with dg.instance_for_test() as instance:
        resources = _resources(root / "data")
        summary = materialize_product(settings, instance, resources, run_config=_steps(settings.name, 40),
                                      say=lambda _: None)
        yield settings, instance, resources, summary


@pytest.fixture(scope="module")
def zion_run(tmp_path_factory):
    """The NLCD Zion product (UTM raster, res 7, 4 regions) materialized once for the module."""
    yield from _materialized(tmp_path_factory, "nlcd_zion", ["landcover/nlcd2011_zion.tif"])


def test_product_zarr_opens_with_xarray_and_decodes_with_xdggs(zion_run):
    settings, _, resources, summary = zion_run
    # What a user writes: icechunk opens the repository's latest snapshot, xarray and xdggs do the rest.
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(resources["storage"].embeddings_path(
        settings.name))))
    ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    decoded = ds.dggs.decode()
    assert decoded.dggs.grid_info.level == 7
    assert ds.sizes["cells"] == summary.cells == 4 * 343
    embedded = ds["status"].values <= 2
    assert embedded.sum() == summary.embedded_cells > 100
    vectors = ds["embedding"].values[embedded]
    assert vectors.shape[1] == settings.embedding_dim and not np.isnan(vectors).any()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Cells outside this small raster are kept, with a reason, and no vector.
    statuses = json.loads(json.dumps(ds.attrs["statuses"]))
    reasons = {statuses[str(s)] for s in np.unique(ds["status"].values[~embedded])}
    assert "outside_raster" in reasons and np.isnan(ds["embedding"].values[~embedded]).all()
    centres = decoded.dggs.cell_centers()
    lat = centres["latitude"].values[embedded]
    assert 37.0 < lat.min() and lat.max() < 37.6


def _data_version(instance, key) -> str:
    record = instance.get_latest_data_version_record(dg.AssetKey(key))
    return extract_data_version_from_entry(record.event_log_entry).value


def test_lineage_model_and_source_versions(zion_run):
    settings, instance, resources, summary = zion_run
    name = settings.name
    model_event = instance.get_latest_materialization_event(dg.AssetKey([name, "embedding_model"]))
    model_meta = model_event.asset_materialization.metadata
    assert model_meta["model_version"].value == summary.model_version
    assert _data_version(instance, [name, "embedding_model"]) == summary.model_version
    source_version = _data_version(instance, [name, "landcover_source"])
    ds = resources["storage"].open_product(name)
    assert ds.attrs["model_versions"] == [summary.model_version]
    assert ds.attrs["source_versions"] == [source_version]
    rows = ds["status"].values <= 2
    assert {decode_version(v) for v in ds["model_version"].values[rows]} == {summary.model_version}
    emb_event = instance.get_latest_materialization_event(dg.AssetKey([name, "cell_embeddings"]))
    assert emb_event.asset_materialization.metadata["model_version"].value == summary.model_version
    assert emb_event.asset_materialization.metadata["source_version"].value == source_version
    partitions = instance.get_materialized_partitions(dg.AssetKey([name, "cell_embeddings"]))
    assert partitions == set(instance.get_dynamic_partitions(f"{name}_regions")) and len(partitions) == 4
    quality = model_meta["quality_knn5_balanced_accuracy"].value
    assert "trained" in quality and "untrained" in quality and "pca_of_class_fractions" in quality
    table = model_meta["held_out_evaluation"].value
    for task in ("knn5_balanced_accuracy", "class_fractions_linear_r2", "retrieval_precision_at_10"):
        assert task in table
    # The check compares the trained model with every baseline on the headline task, whatever it concludes.
    check_key = dg.AssetCheckKey(dg.AssetKey([name, "embedding_model"]), "beats_every_baseline")
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key])[check_key]
    evaluation = check.event.dagster_event.event_specific_data
    headline = {k: v.value for k, v in evaluation.metadata.items()}
    assert evaluation.passed == (headline["trained"] > max(headline["untrained"], headline["pca_of_class_fractions"]))
    assert headline["margin_over_best_baseline"] == round(
        headline["trained"] - max(headline["untrained"], headline["pca_of_class_fractions"]), 4)
    assert "data:image/png;base64," in model_meta["loss_curve"].value
    map_event = instance.get_latest_materialization_event(dg.AssetKey([name, "embedding_map"]))
    assert "data:image/png;base64," in map_event.asset_materialization.metadata["map"].value
    # the map's PCA ran chunk-parallel on the (local) Dask cluster resource
    assert "on 2 Dask workers (local cluster)" in map_event.asset_materialization.metadata["pca"].value


def test_asset_checks_pass(zion_run):
    settings, instance, _, _ = zion_run
    key = dg.AssetKey([settings.name, "cell_embeddings"])
    for check in ("every_valid_cell_embedded", "no_nan", "unit_norm"):
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(key, check)]
        )[dg.AssetCheckKey(key, check)]
        assert record.status.value == "SUCCEEDED", check


def test_the_map_server_shows_the_products_own_colours_and_samples(zion_run):
    """`geoembed serve` over the materialized product: the map's cells carry exactly the Dagster map's
    colours (PCA of the store's embedded rows), and a cell's details are what its samples say. (Before the
    retraining test below, which leaves the store holding two model versions.)"""
    import urllib.request

    from conftest import geoembed_serve
    from geoembed.core.evaluation import principal_rgb
    from geoembed.landcover.windows import EMBEDDED

    settings, _, resources, _ = zion_run
    storage = resources["storage"]
    ds = storage.open_product(settings.name)
    rows = np.nonzero(np.isin(ds["status"].values, EMBEDDED))[0]  # what embedding_map draws
    expected = dict(zip(ds["cell_ids"].values[rows].tolist(), np.round(principal_rgb(ds["embedding"].values[rows]) * 255)))
    with geoembed_serve(storage.product_dir(settings.name).parent) as url:
        def get(path: str) -> dict:
            with urllib.request.urlopen(url + path, timeout=120) as response:
                return json.loads(response.read())

        view = get(f"/api/map/cells?product={settings.name}&max_cells=50000")
        assert view["resolution"] == settings.resolution and len(view["cells"]) == len(expected)
        rgb = np.frombuffer(bytes.fromhex(view["rgb"]), dtype=np.uint8).reshape(-1, 3).astype(int)
        assert np.abs(rgb - np.stack([expected[int(c, 16)] for c in view["cells"]])).max() <= 1
        cell = view["cells"][len(view["cells"]) // 2]
        details = get(f"/api/cells/{cell}?product={settings.name}")
    samples = storage.open_samples(settings.name, details["region"])
    index = int(np.searchsorted(samples["cell_ids"].values, np.uint64(int(cell, 16))))
    fractions = dict(zip(samples["class_name"].values.tolist(), samples["fractions"].values[index].tolist()))
    assert details["class_fractions"] == pytest.approx({k: v for k, v in fractions.items() if v > 0}, abs=1e-6)
    assert details["status"] in ("ok", "edge", "partial_nodata")
    assert details["dominant_class"] == max(fractions, key=fractions.get)
    assert list(details["class_fractions"].values()) == sorted(details["class_fractions"].values(), reverse=True)


def test_retraining_makes_embeddings_stale_and_rerun_replaces(zion_run):
    settings, instance, resources, summary = zion_run
    name = settings.name
    defs = build_definitions([settings], resources)
    assets = list(defs.assets)
    key = dg.AssetKey([name, "cell_embeddings"])
    partition = sorted(instance.get_dynamic_partitions(f"{name}_regions"))[0]

    def status():
        # The resolver behind the UI's "stale" badges.
        return get_stale_status_resolver(instance, assets).get_status(key, partition)

    assert status() == StaleStatus.FRESH
    # The automation conditions the daemon evaluates: nothing to do while the product is fresh...
    baseline = dg.evaluate_automation_conditions(defs, instance)
    assert baseline.total_requested == 0
    dg.materialize(assets, selection=[dg.AssetKey([name, "embedding_model"])], instance=instance,
                   resources=resources, run_config=_steps(name, 25))
    new_version = json.loads(resources["storage"].current_model_path(name).read_text())["model_version"]
    assert new_version != summary.model_version
    assert status() == StaleStatus.STALE
    # ...and a new model version requests every embedding partition.
    after_training = dg.evaluate_automation_conditions(defs, instance, cursor=baseline.cursor)
    partitions = set(instance.get_dynamic_partitions(f"{name}_regions"))
    assert set(after_training.get_requested_partitions(key)) == partitions
    dg.materialize(assets, selection=[key], instance=instance, resources=resources, partition_key=partition)
    assert status() == StaleStatus.FRESH
    # Each partition's latest materialization says which model version it holds (the UI shows it).
    held = {p: _latest_metadata(instance, key, p)["model_version"].value for p in partitions}
    assert held[partition] == new_version
    assert {v for p, v in held.items() if p != partition} == {summary.model_version}
    ds = resources["storage"].open_product(name)
    rows = ds["status"].values <= 2
    versions = np.array([decode_version(v) for v in ds["model_version"].values])
    in_partition = np.isin(ds["cell_ids"].values, region_cells(int(partition, 16), settings.resolution))
    assert set(versions[rows & in_partition].tolist()) == {new_version}
    assert set(versions[rows & ~in_partition].tolist()) == {summary.model_version}
    assert len(np.unique(ds["cell_ids"].values)) == ds.sizes["cells"]  # no duplicated rows


def _latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization.metadata


def test_invalid_partition_key_fails_clearly(zion_run):
    settings, instance, resources, _ = zion_run
    assets = list(build_definitions([settings], resources).assets)
    with pytest.raises(Exception, match="nonsense"):
        dg.materialize(assets, selection=[dg.AssetKey([settings.name, "landcover_samples"])], instance=instance,
                       resources=resources, partition_key="nonsense")


def test_worldcover_by_configuration_alone(worldcover_2020, tmp_path):
    """Another raster (10 m, legend from its tag), resolution, window and dimension: settings only."""
    settings = settings_from_mapping({
        "name": "wc_test", "raster": str(worldcover_2020), "legend": "tag:legend", "background_classes": [80],
        "resolution": 9, "region_resolution": 6, "window_size": 32, "embedding_dim": 16,
        "bbox": [6.70, 0.30, 6.74, 0.34],
    })
    with dg.instance_for_test() as instance:
        resources = _resources(tmp_path / "data")
        summary = materialize_product(settings, instance, resources, run_config=_steps("wc_test", 20),
                                      say=lambda _: None)
        ds = resources["storage"].open_product("wc_test").dggs.decode()
        assert ds.dggs.grid_info.level == 9 and ds.sizes["embedding_dim"] == 16
        assert summary.regions >= 1 and summary.embedded_cells > 0


def test_bad_raster_fails_and_keeps_what_was_materialized(tmp_path):
    data = np.where(np.arange(64)[None, :] < 32, 1, 2).repeat(64, axis=0).astype(np.uint8)
    raster = write_raster(tmp_path / "lc.tif", data, from_origin(10.0, 1.0, 0.01, 0.01), nodata=0)
    settings = settings_from_mapping({"name": "bad_test", "raster": str(raster), "legend": {1: "a", 2: "b"},
                                      "resolution": 7, "region_resolution": 5, "window_size": 8,
                                      "embedding_dim": 8})
    resources = _resources(tmp_path / "data")
    assets = list(build_definitions([settings], resources).assets)
    with dg.instance_for_test() as instance:
        dg.materialize(assets, selection=[dg.AssetKey(["bad_test", "h3_regions"])], instance=instance,
                       resources=resources)
        key = sorted(instance.get_dynamic_partitions("bad_test_regions"))[0]
        samples_key = dg.AssetKey(["bad_test", "landcover_samples"])
        dg.materialize(assets, selection=[samples_key], instance=instance, resources=resources, partition_key=key)
        before = resources["storage"].open_samples("bad_test", key).load()
        # The raster changes: now it holds a class that the legend does not know.
        write_raster(raster, np.where(data == 2, 7, data).astype(np.uint8), from_origin(10.0, 1.0, 0.01, 0.01),
                     nodata=0)
        # Sampling a file that changed after the stencil was made is refused, naming the file.
        with pytest.raises(dg.Failure, match=r"lc.tif' was changed after the stencil"):
            dg.materialize(assets, selection=[samples_key], instance=instance, resources=resources,
                           partition_key=key)
        stencil_before = resources["storage"].stencil_path("bad_test").read_text()
        # Bad input fails at once (no retry), the message naming the error, the file and the problem.
        with pytest.raises(dg.Failure, match=r"RasterInputError: raster .*lc.tif.*values \[7\].*not in the legend") as err:
            dg.materialize(assets, selection=[dg.AssetKey(["bad_test", "h3_regions"])], instance=instance,
                           resources=resources)
        assert not err.value.allow_retries and isinstance(err.value.__cause__, RasterInputError)
        after = resources["storage"].open_samples("bad_test", key).load()
        xr.testing.assert_identical(before, after)
        assert resources["storage"].stencil_path("bad_test").read_text() == stencil_before
        # A raster with no valid data at all fails in the stencil, naming the file.
        write_raster(raster, np.zeros_like(data), from_origin(10.0, 1.0, 0.01, 0.01), nodata=0)
        with pytest.raises(dg.Failure, match="RasterInputError: .*lc.tif.*covers no H3 cell"):
            dg.materialize(assets, selection=[dg.AssetKey(["bad_test", "h3_regions"])], instance=instance,
                           resources=resources)


def test_cli_reports_bad_settings_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nraster: nope.tif\nresolution: 99\n")
    result = subprocess.run([sys.executable, "-m", "geoembed.cli", "run", "--product", str(bad)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.yaml" in result.stderr and "resolution" in result.stderr and "Traceback" not in result.stderr


def test_cli_reports_a_missing_raster_without_traceback(tmp_path):
    product = tmp_path / "p.yaml"
    product.write_text("name: p\nraster: missing.tif\nresolution: 5\n")
    result = subprocess.run([sys.executable, "-m", "geoembed.cli", "run", "--product", str(product),
                             "--dagster-home", str(tmp_path / "home"), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "missing.tif" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_product_is_loaded_into_postgres_and_searchable(zion_run):
    settings, instance, resources, summary = zion_run
    name = settings.name
    from geoembed.core.sinks import pgvector as db

    with resources["database"].connect() as conn:
        found = db.latest_model_table(conn, name)
        assert db.count_rows(conn, found.table) == summary.embedded_cells
        assert conn.execute(f"SELECT count(DISTINCT model_version) FROM geoembed.{found.table}").fetchone()[0] == 1
    key = dg.AssetKey([name, "embedding_index"])
    check = dg.AssetCheckKey(key, "ann_recall_at_10")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check])[check]
    assert record.status.value == "SUCCEEDED"
    assert set(instance.get_materialized_partitions(dg.AssetKey([name, "embedding_table"]))) == set(
        instance.get_dynamic_partitions(f"{name}_regions"))
    data_dir = str(resources["storage"].product_dir(name).parent)
    cli = [sys.executable, "-m", "geoembed.cli", "similar", "--product", name, "--data-dir", data_dir]
    result = subprocess.run(cli + ["--lonlat", "-113.0", "37.25", "-k", "4", "--format", "geojson"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    collection = json.loads(result.stdout)
    assert len(collection["features"]) == 4 and collection["properties"]["model_version"] == found.model_version
    result = subprocess.run(cli + ["--cell", "not-a-cell"], capture_output=True, text=True)
    assert result.returncode == 2 and "not-a-cell" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("arguments, message", [
    (["--lonlat", "200", "37"], "out of range"),
    (["--lonlat", "-113", "37.25", "--bbox", "1,2,3"], "bbox"),
    (["--lonlat", "-113", "37.25", "--bbox=10,5,20,1"], "bbox"),
    (["--lonlat", "-113", "37.25", "--geojson", '{"type": "Point", "coordinates": [1, 2]}'], "not an area"),
    (["--lonlat", "-113", "37.25", "--geojson", "{broken"], "not valid JSON"),
    (["--cell", "872990b42ffffff", "--lonlat", "1", "2"], "exactly one of"),
])
def test_cli_similar_rejects_bad_input_with_exit_2(zion_run, arguments, message):
    settings, _, resources, _ = zion_run
    data_dir = str(resources["storage"].product_dir(settings.name).parent)
    result = subprocess.run([sys.executable, "-m", "geoembed.cli", "similar", "--product", settings.name,
                             "--data-dir", data_dir, *arguments], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def stacked_zion_run(tmp_path_factory):
    """NLCD land cover with SRTM elevation stacked on the same footprints, materialized once, stored as
    int8 (the compact product): every later step reads the dequantised vectors."""
    yield from _materialized(tmp_path_factory, "nlcd_srtm_zion",
                             ["landcover/nlcd2011_zion.tif", "elevation/srtm_zion.tif"], embedding_storage="int8")


def test_stacked_product_embeds_land_cover_and_elevation_with_every_source_version(stacked_zion_run):
    from geoembed.core.lineage import content_version
    from geoembed.core.sinks import pgvector as db
    from geoembed.landcover.encoder import load_checkpoint

    settings, instance, resources, summary = stacked_zion_run
    storage = resources["storage"]
    srtm_version = content_version(settings.stack[0].raster_location)
    nlcd_version = content_version(settings.raster_location)
    # Samples: the elevation window of every cell, in metres, beside its land-cover window.
    state = storage.read_stencil(settings.name)
    samples = storage.open_samples(settings.name, state.regions[0])
    assert samples["values_elevation"].shape == samples["windows"].shape
    assert "missing_elevation" in samples.attrs["statuses"]
    embedded = np.isin(samples["status"].values, [0, 1, 2])
    assert 1000 < np.nanmean(samples["values_elevation"].values[embedded]) < 2700
    # The product store: both sources' content versions on every embedded row.
    ds = storage.open_product(settings.name)
    rows = np.isin(ds["status"].values, [0, 1, 2])
    assert rows.sum() == summary.embedded_cells > 100
    assert [str(n) for n in ds["stacked_source"].values] == ["elevation"]
    assert {decode_version(v) for v in ds["stacked_source_version"].values[rows, 0]} == {srtm_version}
    assert {decode_version(v) for v in ds["source_version"].values[rows]} == {nlcd_version}
    assert set(ds.attrs["source_versions"]) == {nlcd_version, srtm_version}
    # PostgreSQL: each row names every source's version.
    with resources["database"].connect() as conn:
        found = conn.execute(f'SELECT DISTINCT source_version FROM geoembed."{settings.name}_{summary.model_version}"'
                             ).fetchall()
    assert found == [(f"{nlcd_version};elevation={srtm_version}",)]
    # int8 storage: codes and per-vector scales in Zarr, the dequantised unit vectors in PostgreSQL.
    assert "embedding" not in ds and ds["embedding_int8"].dtype == np.int8
    dequantised = ds["embedding_int8"].values[rows] * ds["embedding_scale"].values[rows][:, None]
    dequantised /= np.linalg.norm(dequantised, axis=1, keepdims=True)
    with resources["database"].connect() as conn:
        table = db.latest_model_table(conn, settings.name).table
        loaded = np.array([v.to_numpy() for (v,) in conn.execute(
            f"SELECT embedding FROM geoembed.{table} ORDER BY h3").fetchall()])
    order = np.argsort(ds["cell_ids"].values[rows].astype(np.int64))
    np.testing.assert_allclose(loaded, dequantised[order], atol=1e-6)
    # The model: elevation normalised by its training windows' median; probed for elevation and roughness
    # beside the raw inputs' summary statistics.
    model, _ = load_checkpoint((storage.model_dir(settings.name, summary.model_version) / "checkpoint.pt").read_bytes())
    assert model.spec.channels == 2 and 1000 < model.spec.continuous_centre[0] < 2700
    table = instance.get_latest_materialization_event(dg.AssetKey([settings.name, "embedding_model"])
                                                      ).asset_materialization.metadata["held_out_evaluation"].value
    for column in ("elevation_mean_linear_r2", "elevation_roughness_linear_r2", "input_summary_statistics"):
        assert column in table
