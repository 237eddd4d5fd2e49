"""A landing location with entries that cannot be examined or read: one bad entry never stops the
others, and is reported (listing, sensor warning and observation, the stencil's rejected files)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from rasterio.transform import from_origin

from conftest import write_raster
from geoembed.core import sources
from geoembed.landcover.settings import load_settings
from geoembed_assets.core.landing import landing_sensor_name
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.landcover.job import materialize_product
from geoembed_resources import InferenceDevice


def _landing(tmp_path: Path) -> Path:
    """Two small real-looking rasters, a symlink loop, a link to nothing, and a newest file that is not a
    raster at all."""
    landing = tmp_path / "landing"
    landing.mkdir()
    rng = np.random.default_rng(0)
    for i, west in enumerate((10.0, 10.5)):
        write_raster(landing / f"lc_{i}.tif", rng.integers(1, 4, (200, 200), dtype=np.uint8),
                     from_origin(west, 1.0, 0.0025, 0.0025), nodata=0)
    (landing / "loop_a.tif").symlink_to(landing / "loop_b.tif")
    (landing / "loop_b.tif").symlink_to(landing / "loop_a.tif")
    (landing / "gone.tif").symlink_to(landing / "nowhere.tif")
    newest = landing / "zz_newest.tif"
    newest.write_bytes(b"not a raster at all")
    os.utime(newest, ns=(2 * 10**18, 2 * 10**18))
    return landing


def test_listing_reports_entries_it_cannot_examine(tmp_path):
    landing = _landing(tmp_path)
    listing = sources.list_local(landing, "*.tif")
    assert [f.name for f in listing] == ["lc_0.tif", "lc_1.tif", "zz_newest.tif"]
    assert set(listing.rejected) == {"loop_a.tif", "loop_b.tif", "gone.tif"}
    assert "Too many levels of symbolic links" in listing.rejected["loop_a.tif"]
    assert listing.rejected["gone.tif"] == "a symbolic link to nothing"
    (landing / "lc_1.tif").unlink()  # vanishes between the listing and the read
    versioned = sources.with_versions(listing, {})
    assert [f.name for f in versioned] == ["lc_0.tif", "zz_newest.tif"] and "lc_1.tif" in versioned.rejected
    changes = sources.diff_landing({}, listing)
    assert "lc_1.tif" in changes.rejected and [f.name for f in changes.added] == ["lc_0.tif", "zz_newest.tif"]
    assert "loop_a.tif" not in changes.removed


@pytest.mark.integration
def test_bad_entries_never_stop_the_run_or_the_sensor(tmp_path):
    landing = _landing(tmp_path)
    product = tmp_path / "landing.yaml"
    product.write_text(yaml.safe_dump({"name": "bad_entries", "landing": str(landing), "resolution": 6,
                                       "region_resolution": 3, "window_size": 8, "embedding_dim": 8,
                                       "legend": {1: "a", 2: "b", 3: "c"}}))
    settings = load_settings(product)
    resources = local_resources(tmp_path / "data", inference_device=InferenceDevice(device="cpu"))
    config = {"ops": {"bad_entries__embedding_model": {"config": {"steps": 5, "batch_size": 16}}}}
    with dg.instance_for_test() as instance:
        summary = materialize_product(settings, instance, resources, run_config=config, say=lambda _: None)
        assert summary.embedded_cells > 0
        stencil = instance.get_latest_materialization_event(dg.AssetKey(["bad_entries", "h3_regions"]))
        rejected = stencil.asset_materialization.metadata["files_rejected"].value
        assert {"loop_a.tif", "loop_b.tif", "gone.tif", "zz_newest.tif"} <= set(rejected)
        assert "zz_newest.tif" in rejected and "cannot" in rejected["zz_newest.tif"]
        observed = instance.fetch_observations(dg.AssetKey(["bad_entries", "landcover_source"]), limit=1).records[0]
        assert "zz_newest.tif" in observed.asset_observation.metadata["rejected"].value

        sensor = build_definitions([settings], resources).get_sensor_def(landing_sensor_name("bad_entries"))
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = sensor(context)  # an evaluation with a symlink loop in the location completes
        write_raster(landing / "lc_2.tif", np.full((100, 100), 2, np.uint8), from_origin(10.2, 0.8, 0.0025, 0.0025),
                     nodata=0)
        with dg.build_sensor_context(instance=instance, resources=resources, cursor=result.cursor) as context:
            result = sensor(context)
        assert [r.asset_selection for r in result.run_requests] == [[dg.AssetKey(["bad_entries", "h3_regions"])]]
        observation = result.asset_events[0]
        assert observation.metadata["added"].value == ["lc_2.tif"]
        assert {"loop_a.tif", "gone.tif"} <= set(observation.metadata["rejected"].value)


def test_a_missing_landing_location_is_one_line_in_the_sensor(tmp_path):
    product = tmp_path / "gone.yaml"
    product.write_text(yaml.safe_dump({"name": "gone", "landing": str(tmp_path / "not_there"), "resolution": 6,
                                       "legend": {1: "a"}}))
    settings = load_settings(product)
    resources = local_resources(tmp_path / "data")
    sensor = build_definitions([settings], resources).get_sensor_def(landing_sensor_name("gone"))
    kept = sources.encode_cursor({"a.tif": ("1:2:", "0123456789abcdef")}, {"stencil_storage_id": 7})
    with dg.instance_for_test() as instance, dg.build_sensor_context(instance=instance, resources=resources,
                                                                     cursor=kept) as context:
        result = sensor(context)
    assert not result.run_requests and result.cursor == kept  # nothing forgotten while the location is gone
    assert "not_there" in result.skip_reason.skip_message and "is not a directory" in result.skip_reason.skip_message
