"""The Dagster UI in a real browser: a small real product is materialized, the real `dagster-webserver`
serves it, and headless Chromium (Debian's `chromium`, driven by Playwright) opens the asset graph, a
partitions page and the metadata previews. Full-page screenshots go to test-artifacts/ui/ (git ignores
them): look at them to see what a user sees.

Dagster shows a markdown metadata value longer than 1,000 characters (ours: a PNG as a data URI) as a
"[Show Markdown]" link in the metadata table; the picture renders in the dialog that link opens.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from conftest import REPO, chromium_browser, dagster_deployment, shared_file
from geoembed.core.backfill import serve_dagster

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "test-artifacts" / "ui"
PRODUCT = REPO / "products" / "nlcd_zion.yaml"
NAME = "nlcd_zion"
ASSETS = ["landcover_source", "h3_regions", "landcover_samples", "embedding_model", "cell_embeddings",
          "embedding_map", "embedding_table", "embedding_index"]
TIMEOUT_MS = 90_000  # a shared 2-core machine: the code server and the graph layout take a while


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", png[16:24])


def _materialize(home: Path, data: Path) -> dict:
    """The whole product except the PostgreSQL assets, in-process, on the instance in `home`."""
    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from geoembed.landcover.settings import load_settings
    from geoembed_assets.definitions import build_definitions, local_resources
    from geoembed_resources import InferenceDevice, ProductStorage

    settings = load_settings(PRODUCT)
    storage = ProductStorage(root=str(data))
    resources = local_resources(data, storage=storage, inference_device=InferenceDevice(device="cpu"))
    assets = list(build_definitions([settings], resources).assets)

    def run(asset: str, **kwargs) -> None:
        result = dg.materialize(assets, selection=[dg.AssetKey([NAME, asset])], instance=instance,
                                resources=resources, **kwargs)
        assert result.success, asset

    with dg.DagsterInstance.get() as instance:
        run("h3_regions")
        partitions = instance.get_dynamic_partitions(f"{NAME}_regions")
        assert partitions
        every_partition = {ASSET_PARTITION_RANGE_START_TAG: partitions[0], ASSET_PARTITION_RANGE_END_TAG: partitions[-1]}
        run("landcover_samples", tags=every_partition)
        run("embedding_model", run_config={"ops": {f"{NAME}__embedding_model": {"config": {"steps": 20, "batch_size": 64}}}})
        run("cell_embeddings", tags=every_partition)
        run("embedding_map")
    version = json.loads(storage.current_model_path(NAME).read_text())["model_version"]
    return {
        "partitions": partitions,
        "model_version": version,
        # What the metadata previews must show, byte for byte.
        "pngs": {"map": storage.picture_path(NAME, "embedding_map.png").read_bytes(),
                 "loss_curve": (storage.model_dir(NAME, version) / "loss_curve.png").read_bytes()},
    }


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A materialized product, the webserver serving it, and a headless Chromium; torn down afterwards."""
    shared_file("nlcd2011_zion.tif")
    root = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as mp:
        env = dagster_deployment(root, PRODUCT, mp)
        product = _materialize(Path(env["DAGSTER_HOME"]), Path(env["GEOEMBED_DATA_DIR"]))

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with serve_dagster("dagster-webserver", env, ARTIFACTS / "webserver.log") as base:
        with chromium_browser() as browser:
            yield {**product, "base": base, "browser": browser}


def _page(ui, height: int = 1000):
    page = ui["browser"].new_page(viewport={"width": 1600, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    return page


def _shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_asset_graph_shows_the_products_assets(ui):
    page = _page(ui)
    try:
        page.goto(f"{ui['base']}/locations/geoembed/asset-groups/{NAME}")
        graph = page.locator("svg foreignObject")  # the lineage graph draws each asset node there
        for asset in ASSETS:
            graph.get_by_text(asset, exact=True).first.wait_for(state="visible")
        page.get_by_text("Asset Group in").wait_for(state="visible")
        _shot(page, "01_asset_graph")
    finally:
        page.close()


def test_partitions_page_shows_every_region_and_its_model_version(ui):
    partitions = ui["partitions"]
    page = _page(ui)
    try:
        page.goto(f"{ui['base']}/assets/{NAME}/cell_embeddings?view=partitions")
        page.get_by_text(f"{len(partitions)} Partitions Selected").wait_for(state="visible")
        page.get_by_text(f"Materialized ({len(partitions)})").wait_for(state="visible")
        page.get_by_text("Missing (0)").wait_for(state="visible")
        for key in partitions:
            page.get_by_text(key, exact=True).first.wait_for(state="visible")
        _shot(page, "02_partitions")

        # One partition: its materialization metadata names the model version that made it.
        page.get_by_text(partitions[0], exact=True).first.click()
        page.get_by_text("model_version", exact=True).first.wait_for(state="visible")
        page.get_by_text(ui["model_version"], exact=True).first.wait_for(state="visible")
        assert f"partition={partitions[0]}" in page.url
        _shot(page, "03_partition_metadata")
    finally:
        page.close()


@pytest.mark.parametrize(("asset", "label"), [("embedding_map", "map"), ("embedding_model", "loss_curve")])
def test_png_previews_in_the_metadata_are_visible(ui, asset, label):
    # Tall enough that the 900 x 950 px map and its dialog fit on screen (and in the screenshot).
    page = _page(ui, height=1400)
    try:
        page.goto(f"{ui['base']}/assets/{NAME}/{asset}")
        row = page.locator("tr").filter(has=page.get_by_text(label, exact=True))
        link = row.get_by_text("[Show Markdown]", exact=True).first
        link.wait_for(state="visible")
        _shot(page, f"04_{asset}_overview")
        link.click()

        dialog = page.get_by_role("dialog")
        image = dialog.locator("img").first
        image.wait_for(state="visible")
        src = image.get_attribute("src")
        assert src.startswith("data:image/png;base64,"), src[:80]
        # The picture in the UI is exactly the PNG the asset wrote.
        shown = base64.b64decode(src.split(",", 1)[1])
        assert shown == ui["pngs"][label]
        natural = image.evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
        assert natural[0] > 0 and tuple(natural) == _png_size(shown)
        image.scroll_into_view_if_needed()
        box = image.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0
        # Nothing covers it: the element at its centre is the image itself.
        on_top = page.evaluate(
            "([x, y]) => { const e = document.elementFromPoint(x, y); return e && e.tagName === 'IMG' && e.src.startsWith('data:image/png'); }",
            [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
        )
        assert on_top, f"the {label} preview is covered by another element"
        _shot(page, f"05_{asset}_{label}_preview")
    finally:
        page.close()
