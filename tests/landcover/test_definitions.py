"""The code location loads as Dagster would load it, and its asset graph is what we expect."""

import os
import subprocess
import sys

import dagster as dg
import pytest

from conftest import REPO
from geoembed.landcover.settings import load_settings
from geoembed_assets.definitions import build_definitions

# Snapshot of one product's graph: an accidental change to keys or dependencies shows up here.
EXPECTED_DEPS = {
    "landcover_source": set(),
    "h3_regions": {"landcover_source"},
    "landcover_samples": {"landcover_source", "h3_regions"},
    "embedding_model": {"landcover_samples"},
    "cell_embeddings": {"landcover_samples", "embedding_model"},
    "embedding_map": {"cell_embeddings"},
    "embedding_table": {"cell_embeddings"},
    "embedding_index": {"embedding_table"},
}


def test_asset_graph_snapshot():
    settings = load_settings(REPO / "products" / "nlcd_zion.yaml")
    graph = build_definitions([settings]).resolve_asset_graph()
    deps = {
        key.path[-1]: {p.path[-1] for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert deps == EXPECTED_DEPS
    embeddings = graph.get(dg.AssetKey(["nlcd_zion", "cell_embeddings"]))
    assert embeddings.partitions_def.name == "nlcd_zion_regions"
    assert {c.name for c in embeddings.check_keys} == {"every_valid_cell_embedded", "no_nan", "unit_norm"}
    model = graph.get(dg.AssetKey(["nlcd_zion", "embedding_model"]))
    assert model.partitions_def is None
    assert {c.name for c in model.check_keys} == {"beats_every_baseline", "enough_data_to_evaluate"}


def test_inference_runs_in_the_gpu_pool():
    settings = load_settings(REPO / "products" / "nlcd_zion.yaml")
    defs = build_definitions([settings])
    embeddings = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                      and dg.AssetKey(["nlcd_zion", "cell_embeddings"]) in a.keys)
    assert {op.pool for op in embeddings.node_def.iterate_op_defs()} == {"gpu"}


def test_several_products_in_one_code_location():
    products = [load_settings(REPO / "products" / f) for f in ("nlcd_zion.yaml", "worldcover_saotome.yaml")]
    keys = build_definitions(products).resolve_asset_graph().get_all_asset_keys()
    assert {k.path[0] for k in keys} == {"nlcd_zion", "worldcover_saotome"}


@pytest.mark.integration  # a real Dagster CLI or server process (~7-9 s): out of the fast subset
def test_workspace_loads_with_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "GEOEMBED_PRODUCT": str(REPO / "products" / "nlcd_zion.yaml")}
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    result = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
