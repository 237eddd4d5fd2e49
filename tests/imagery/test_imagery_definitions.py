"""The imagery code location: its asset graph, partitions, GPU pool and sensor, beside a land-cover product."""

import os
import subprocess
import sys

import dagster as dg
import pytest

from conftest import REPO
from geoembed.products import load_product
from geoembed_assets.definitions import build_definitions

EXPECTED_DEPS = {
    "scene_source": set(),
    "scene_catalog": {"scene_source"},
    "scene_chips": {"scene_catalog"},
    "chip_encoder": {"scene_chips"},
    "chip_embeddings": {"scene_chips", "chip_encoder"},
    "chip_change": {"chip_embeddings"},
    "tile_geoparquet": {"chip_embeddings"},
    "chip_table": {"chip_embeddings"},
    "chip_index": {"chip_table"},
}


def test_imagery_asset_graph_snapshot():
    defs = build_definitions([load_product(REPO / "products" / "s2_33uuu.yaml")])
    graph = defs.resolve_asset_graph()
    deps = {key.path[-1]: {p.path[-1] for p in graph.get(key).parent_keys} for key in graph.get_all_asset_keys()}
    assert deps == EXPECTED_DEPS
    chips = graph.get(dg.AssetKey(["s2_33uuu", "scene_chips"]))
    assert isinstance(chips.partitions_def, dg.MultiPartitionsDefinition)
    assert {d.name for d in chips.partitions_def.partitions_defs} == {"tile", "date"}
    change = graph.get(dg.AssetKey(["s2_33uuu", "chip_change"]))
    assert change.partitions_def.name == "s2_33uuu_tiles"
    embeddings = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                      and dg.AssetKey(["s2_33uuu", "chip_embeddings"]) in a.keys)
    assert {op.pool for op in embeddings.node_def.iterate_op_defs()} == {"gpu"}
    assert {c.name for c in graph.get(dg.AssetKey(["s2_33uuu", "chip_embeddings"])).check_keys} == {
        "every_chip_with_data_embedded", "no_nan", "unit_norm"}
    assert defs.get_sensor_def("s2_33uuu_landing_sensor").name == "s2_33uuu_landing_sensor"


@pytest.mark.integration  # a real Dagster CLI or server process (~7-9 s): out of the fast subset
def test_both_pipelines_load_in_one_code_location_with_the_dagster_cli(tmp_path):
    products = ",".join(str(REPO / "products" / f) for f in ("nlcd_zion.yaml", "s2_33uuu.yaml", "s2_18svg.yaml"))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "GEOEMBED_PRODUCT": products}
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    result = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
