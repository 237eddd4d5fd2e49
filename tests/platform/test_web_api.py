"""The HTTP API of `geoembed serve`, as a client meets it: a real server process (uvicorn) on loopback
over the embedded PostgreSQL, asked over HTTP; every endpoint, and bad input answered with a 4xx that
names the problem."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import h3
import h3.api.basic_int as h3i
import numpy as np
import psutil
import pytest

from conftest import REPO, chromium_browser, geoembed_serve
from geoembed.core.evaluation import principal_rgb
from geoembed.core.grids.h3 import cell_centres, region_cells
from geoembed.core.sinks import pgvector as db, search
from geoembed_resources.postgres import PostgresDatabase, release_embedded

pytestmark = pytest.mark.integration  # a server process over the embedded PostgreSQL

DIM, RES = 16, 4
REGIONS = [h3i.latlng_to_cell(lat, lon, 1) for lat, lon in [(10, 10), (12, 20), (40, -100)]]
PRODUCT = "webtest"


def _rows(region: int) -> db.RegionRows:
    cells = region_cells(region, RES)
    lat, lon = cell_centres(cells)
    rng = np.random.default_rng(region % 1000)
    base = np.stack([np.sin(lat / 7 + i) + np.cos(lon / 11 - i) for i in range(DIM)], axis=1)
    vectors = (base + 0.3 * rng.normal(size=base.shape)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return db.RegionRows(region, cells, lon, lat, vectors, "00000000000000v1", "00000000000000s1")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A loaded product and `geoembed serve --port 0` over it; yields (base URL, database)."""
    data = tmp_path_factory.mktemp("web")
    database = PostgresDatabase(embedded_dir=str(data / "postgres"))
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, PRODUCT, "00000000000000v1", DIM, RES)
        for region in REGIONS:
            db.replace_region(conn, table, _rows(region))
        db.build_search_indexes(conn, table)
        conn.execute(f'ANALYZE geoembed."{table}"')
    try:
        with geoembed_serve(data) as url:
            yield url, database
    finally:
        release_embedded(data / "postgres")
    # Nothing the server started outlives it: with both holders gone, the embedded PostgreSQL stopped.
    deadline = time.monotonic() + 30
    while any(str(data) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, "the embedded PostgreSQL outlived `geoembed serve`"
        time.sleep(0.2)


def _get(url: str, path: str, **params) -> tuple[int, dict | list]:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    try:
        with urllib.request.urlopen(f"{url}{path}{'?' + query if query else ''}", timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_products_lists_the_loaded_tables(served):
    url, _ = served
    status, products = _get(url, "/api/products")
    assert status == 200
    assert [(p["product"], p["kind"], p["dim"], p["resolution"]) for p in products] == [(PRODUCT, "h3_cells", DIM, RES)]
    assert products[0]["rows"] == 3 * 343


def test_similar_by_cell_and_by_point_equals_the_search_layer(served):
    url, database = served
    cell = int(region_cells(REGIONS[0], RES)[100])
    status, collection = _get(url, "/api/similar", product=PRODUCT, cell=h3.int_to_str(cell), k=7)
    assert status == 200 and collection["type"] == "FeatureCollection"
    with database.connect(read_only=True) as conn:
        expected = search.similar(conn, PRODUCT, cell, k=7)
    assert [f["properties"]["h3"] for f in collection["features"]] == [m.cell for m in expected.matches]
    assert [f["properties"]["rank"] for f in collection["features"]] == list(range(1, 8))
    assert collection["properties"]["query"] == h3.int_to_str(cell) and collection["properties"]["k"] == 7
    ring = collection["features"][0]["geometry"]["coordinates"][0]
    assert len(ring) == 7 and ring[0] == ring[-1]  # a closed hexagon, lon/lat
    # A point asks with the cell it falls in.
    lat, lon = h3i.cell_to_latlng(cell)
    status, by_point = _get(url, "/api/similar", product=PRODUCT, lon=lon, lat=lat, k=7)
    assert status == 200 and by_point["features"] == collection["features"]


def test_similar_inside_a_bbox_returns_k_places_inside_it(served):
    url, _ = served
    cell = int(region_cells(REGIONS[0], RES)[0])
    lat, lon = h3i.cell_to_latlng(int(region_cells(REGIONS[1], RES)[0]))
    bbox = f"{lon - 3},{lat - 3},{lon + 3},{lat + 3}"
    status, collection = _get(url, "/api/similar", product=PRODUCT, cell=h3.int_to_str(cell), k=5, bbox=bbox)
    assert status == 200 and len(collection["features"]) == 5
    for feature in collection["features"]:
        p = feature["properties"]
        assert lon - 3 <= p["lon"] <= lon + 3 and lat - 3 <= p["lat"] <= lat + 3


def test_cell_details(served):
    url, _ = served
    cell = h3.int_to_str(int(region_cells(REGIONS[2], RES)[5]))
    status, details = _get(url, f"/api/cells/{cell}", product=PRODUCT)
    assert status == 200
    assert details["cell"] == cell and details["region"] == f"{REGIONS[2]:x}"
    assert details["model_version"] == "00000000000000v1" and details["source_version"] == "00000000000000s1"
    assert details["geometry"]["type"] == "Polygon"
    assert details["status"] is None and details["class_fractions"] is None  # loaded without samples


def test_the_api_is_documented(served):
    url, _ = served
    status, spec = _get(url, "/openapi.json")
    assert status == 200 and set(spec["paths"]) == {"/api/products", "/api/similar", "/api/cells/{cell}",
                                                    "/api/map/cells", "/api/map/chips", "/api/chips/thumbnail"}
    names = {p["name"] for p in spec["paths"]["/api/similar"]["get"]["parameters"]}
    assert {"product", "cell", "lon", "lat", "chip", "k", "bbox", "model_version"} <= names


@pytest.mark.parametrize(("path", "params", "status", "says"), [
    ("/api/similar", {"product": PRODUCT, "cell": "not-a-cell"}, 400, "not a valid H3 cell"),
    ("/api/similar", {"product": PRODUCT, "cell": "8428309ffffffff", "k": 0}, 422, "greater than or equal to 1"),
    ("/api/similar", {"product": PRODUCT, "cell": "8428309ffffffff", "k": 100_000}, 422, "less than or equal to"),
    ("/api/similar", {"product": PRODUCT, "cell": "8428309ffffffff", "bbox": "1,2,3"}, 400, "bbox"),
    ("/api/similar", {"product": PRODUCT, "lon": 500, "lat": 0}, 422, "less than or equal to 180"),
    ("/api/similar", {"product": PRODUCT, "lon": 5}, 400, "lon and lat together"),
    ("/api/similar", {"product": PRODUCT}, 400, "exactly one of"),
    ("/api/similar", {"product": "no_such_product", "cell": "8428309ffffffff"}, 404, "no_such_product"),
    ("/api/similar", {"product": PRODUCT, "cell": "8428309ffffffff"}, 400, "has no embedding"),
    ("/api/cells/8428309ffffffff", {"product": PRODUCT}, 404, "has no embedding"),
    ("/api/cells/zz", {"product": PRODUCT}, 400, "not a valid H3 cell"),
    ("/api/map/cells", {"product": PRODUCT, "bbox": "10,0,5,5"}, 400, "west<east"),
    ("/api/map/cells", {"product": PRODUCT, "bbox": "x"}, 400, "four numbers"),
    ("/api/map/cells", {"product": PRODUCT, "max_cells": 0}, 422, "greater than or equal to 1"),
    ("/api/map/cells", {"product": "no_such_product"}, 404, "no_such_product"),
    ("/api/map/chips", {"product": PRODUCT}, 400, "holds H3 cells, not imagery chips"),
    ("/api/chips/thumbnail", {"product": PRODUCT, "chip": "33UUU/2017-02-16/1_2"}, 400, "holds H3 cells"),
    ("/api/chips/thumbnail", {"product": PRODUCT, "chip": "33UUU/1_2"}, 400, "needs its date"),
    ("/api/chips/thumbnail", {"product": PRODUCT, "chip": "nonsense"}, 400, "is not '<tile>"),
])
def test_bad_input_is_a_4xx_naming_the_problem(served, path, params, status, says):
    url, _ = served
    got, body = _get(url, path, **params)
    assert got == status, body
    assert says in json.dumps(body["detail"]), body


def test_the_server_refuses_an_address_it_cannot_bind_in_one_line(served, tmp_path):
    url, _ = served
    port = url.rsplit(":", 1)[1]
    result = subprocess.run([str(Path(sys.executable).with_name("geoembed")), "serve", "--port", port,
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"geoembed: --host/--port: cannot listen on 127.0.0.1:{port}: "
                                                  "Address already in use"]
    assert _get(url, "/api/products")[0] == 200  # the running server is untouched


def test_map_cells_carry_the_dagster_maps_colours_at_the_resolution_the_view_fits(served):
    url, _ = served
    status, whole = _get(url, "/api/map/cells", product=PRODUCT)
    assert status == 200 and whole["resolution"] == RES and whole["product_resolution"] == RES
    cells = np.array([int(c, 16) for c in whole["cells"]], dtype=np.uint64)
    assert len(cells) == whole["cells_in_product"] == 3 * 343
    rows = [_rows(region) for region in REGIONS]
    expected = dict(zip(np.concatenate([r.cells for r in rows]).tolist(),
                        np.round(principal_rgb(np.concatenate([r.embedding for r in rows])) * 255)))
    rgb = np.frombuffer(bytes.fromhex(whole["rgb"]), dtype=np.uint8).reshape(-1, 3)
    assert np.abs(rgb.astype(int) - np.stack([expected[c] for c in cells.tolist()])).max() <= 1
    # A budget smaller than the product: coarser cells, within the budget.
    status, coarse = _get(url, "/api/map/cells", product=PRODUCT, max_cells=100)
    assert status == 200 and coarse["resolution"] < RES and len(coarse["cells"]) <= 100
    # A view around one region: only its cells.
    lat, lon = h3i.cell_to_latlng(REGIONS[2])
    status, near = _get(url, "/api/map/cells", product=PRODUCT, bbox=f"{lon - 8},{lat - 8},{lon + 8},{lat + 8}")
    assert status == 200 and set(near["cells"]) == {f"{c:x}" for c in region_cells(REGIONS[2], RES)}


def test_the_page_and_its_libraries_are_served_locally(served):
    url, _ = served
    with urllib.request.urlopen(url + "/", timeout=60) as response:
        page = response.read().decode()
    sources = re.findall(r'(?:src|href)="(/[^"]+)"', page)
    assert {"/vendor/maplibre-gl/dist/maplibre-gl.js", "/static/map.js"} <= set(sources)
    assert "http" not in " ".join(re.findall(r'(?:src|href)="([^"]+)"', page))  # nothing from the internet
    for path in sources + ["/vendor/world-atlas/countries-110m.json"]:
        with urllib.request.urlopen(url + path, timeout=60) as response:
            assert response.status == 200 and len(response.read()) > 100, path


MAP_ARTIFACTS = REPO / "test-artifacts" / "map"
BROWSER_TIMEOUT_MS = 90_000  # a shared 2-core machine, WebGL in software


@pytest.fixture(scope="module")
def map_page(served):
    """The map page in headless Chromium, opened on the first region, once its cells are drawn."""
    url, _ = served
    MAP_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in MAP_ARTIFACTS.glob("*"):
        old.unlink()
    lat, lon = h3i.cell_to_latlng(REGIONS[0])
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        page.set_default_timeout(BROWSER_TIMEOUT_MS)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
        page.goto(f"{url}/?product={PRODUCT}&lon={lon}&lat={lat}&zoom=4&k=8")
        page.wait_for_function("window.geoembed && window.geoembed.ready")
        yield page, problems
        page.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_map_draws_the_products_cells_over_the_context_layer(map_page):
    page, problems = map_page
    shot = page.locator("#map").screenshot(path=str(MAP_ARTIFACTS / "map_initial.png"))
    pixels = _pixels(shot)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, "the map canvas is blank or flat"
    assert problems == [] and page.evaluate("window.geoembed.errors") == []
    status = page.locator("#layer-status").inner_text()
    assert f"at H3 res {RES} (the product's own)" in status and "00000000000000v1" in status
    assert page.locator("#product option").all_inner_texts() == [PRODUCT]


def test_clicking_a_cell_highlights_the_apis_top_k_and_downloads_them(map_page, served, tmp_path):
    page, problems = map_page
    url, _ = served
    cell = int(region_cells(REGIONS[0], RES)[200])
    lat, lon = h3i.cell_to_latlng(cell)
    x, y = page.evaluate(f"(() => {{ const p = window.geoembed.map.project([{lon}, {lat}]); return [p.x, p.y]; }})()")
    box = page.locator("#map").bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_function("window.geoembed.clicks.length === 1")
    click = page.evaluate("window.geoembed.clicks[0]")
    status, expected = _get(url, "/api/similar", product=PRODUCT, cell=h3.int_to_str(cell), k=8)
    assert status == 200 and click["query"] == h3.int_to_str(cell)
    top_k = [f["properties"]["h3"] for f in expected["features"]]
    assert click["places"] == top_k and len(top_k) == 8
    # What the map draws is what the API answered: the highlight layer holds exactly those cells.
    drawn = page.evaluate("window.geoembed.map.querySourceFeatures('similar').map(f => f.properties.h3)")
    assert set(drawn) == set(top_k)
    listed = page.locator("#results li").all_inner_texts()
    assert [item.split()[0] for item in listed] == top_k
    assert [float(item.split()[1]) for item in listed] == pytest.approx(
        [f["properties"]["distance"] for f in expected["features"]], abs=1e-4)
    page.locator("#map").screenshot(path=str(MAP_ARTIFACTS / "map_similar.png"))
    page.screenshot(path=str(MAP_ARTIFACTS / "page_similar.png"))
    with page.expect_download() as download:
        page.locator("#download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    collection = json.loads(saved.read_text())
    assert saved.suffix == ".geojson" and collection["type"] == "FeatureCollection"
    assert [f["properties"]["h3"] for f in collection["features"]] == top_k
    assert problems == []


def test_similar_restricted_to_the_view_stays_inside_it(map_page):
    page, problems = map_page
    page.locator("#restrict").check()
    page.locator("#k").fill("5")
    page.evaluate("window.geoembed.map.jumpTo({zoom: 6})")
    page.wait_for_function("window.geoembed.map.loaded()")
    west, south, east, north = page.evaluate("window.geoembed.map.getBounds().toArray().flat()")
    box = page.locator("#map").bounding_box()
    clicks = page.evaluate("window.geoembed.clicks.length")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(f"window.geoembed.clicks.length === {clicks + 1}")
    result = page.evaluate("window.geoembed.lastResult")
    assert len(result["features"]) == 5
    for feature in result["features"]:
        p = feature["properties"]
        assert west <= p["lon"] <= east and south <= p["lat"] <= north
    assert "inside the view" in page.locator("#search-status").inner_text()
    page.locator("#map").screenshot(path=str(MAP_ARTIFACTS / "map_similar_in_view.png"))
    assert problems == []


def test_dragging_pans_the_map_and_searches_nothing(map_page):
    page, problems = map_page
    box = page.locator("#map").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = page.evaluate("window.geoembed.map.getCenter().toArray()")
    clicks = page.evaluate("window.geoembed.clicks.length")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 200, y, steps=8)
    page.mouse.up()
    page.wait_for_function("window.geoembed.map.loaded()")
    after = page.evaluate("window.geoembed.map.getCenter().toArray()")
    moved = page.evaluate(f"window.geoembed.map.project({after})['x'] - window.geoembed.map.project({before})['x']")
    assert moved == pytest.approx(200, abs=2)  # the map followed the mouse
    page.wait_for_timeout(500)
    assert page.evaluate("window.geoembed.clicks.length") == clicks and problems == []
