"""Map benchmark: `geoembed serve` and its page in headless Chromium over a loaded product.

    python -m benchmarks.map_bench --product modis_global_res5 [--clicks 100] [--json map_bench.json]

It starts a real `geoembed serve` on the data folder (GEOEMBED_DATA_DIR, or --data-dir) and measures, in
one run:
- the colour layer's build (once per table: the embeddings read as distinct vectors, PCA, the pyramid);
- time to first map paint (navigation start to the first frame with the product's cells drawn, in a
  fresh browser context each time: nothing cached) and the bytes sent for that initial view, against the
  bytes of the same cells payload carrying every cell of the product (what a page without aggregation
  would have to fetch), compressed the same way;
- click-to-highlight latency (a real mouse click, search, highlight drawn) over random cells of the
  product in the view, against the same searches asked of the API directly (no browser) in the same run,
  and the same searches started by the page's code (no mouse events: MapLibre draws no frame for them,
  which in a browser without a GPU is most of a click's cost).
Goals (issue 12): first paint under 2 s, click-to-highlight p50 under 150 ms on a 2-core machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import h3.api.basic_int as h3i
import numpy as np

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path("bench-results")  # git ignores it


def _get(url: str) -> tuple[bytes, float]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = response.read()
    return body, time.perf_counter() - start


def _percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def _serve(data_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "GEOEMBED_DATA_DIR": str(data_dir)}
    server = subprocess.Popen([str(Path(sys.executable).with_name("geoembed")), "serve", "--port", "0"],
                              stdout=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    if "http://" not in line:
        server.kill()
        raise SystemExit(f"map_bench: geoembed serve did not start: {line.strip()}")
    return server, line.split("on ", 1)[1].split()[0]


def _all_cells_bytes(url: str, product: str) -> tuple[int, int]:
    """The cells payload of every product cell (the API's format at the product's resolution), raw and
    gzipped as the server compresses: what a page without aggregation would fetch."""
    meta = json.loads(_get(f"{url}/api/map/cells?product={product}&max_cells=1")[0])  # the coarsest level
    from geoembed.core.sinks.pgvector import latest_model_table, read_table_embeddings
    from geoembed_resources.postgres import DSN_ENV_VAR, PostgresDatabase

    database = PostgresDatabase(dsn=os.environ.get(DSN_ENV_VAR) or None,
                                embedded_dir=str(Path(os.environ["GEOEMBED_DATA_DIR"]) / "postgres"))
    with database.connect(read_only=True) as conn:
        keys = read_table_embeddings(conn, latest_model_table(conn, product, meta["model_version"])).keys
    payload = json.dumps({**meta, "resolution": meta["product_resolution"], "cells": [f"{k:x}" for k in keys.tolist()],
                          "rgb": "00" * 3 * len(keys), "cells_in_product": len(keys)}).encode()
    return len(payload), len(gzip.compress(payload, compresslevel=9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--product", default="modis_global_res5")
    parser.add_argument("--data-dir", default=os.environ.get("GEOEMBED_DATA_DIR", "data"))
    parser.add_argument("--clicks", type=int, default=100)
    parser.add_argument("--loads", type=int, default=5, help="fresh page loads for the first-paint figure")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()
    os.environ["GEOEMBED_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from playwright.sync_api import sync_playwright

    server, url = _serve(Path(args.data_dir))
    figures: dict[str, object] = {"product": args.product, "clicks": args.clicks, "k": args.k}
    try:
        _, seconds = _get(f"{url}/api/map/cells?product={args.product}")  # waits for (or does) the layer build
        figures["layer_ready_after_start_s"] = seconds
        raw_all, gzip_all = _all_cells_bytes(url, args.product)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--disable-dev-shm-usage", "--no-sandbox"])
            paints, sent = [], []
            for load in range(args.loads):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.goto(f"{url}/?product={args.product}")
                page.wait_for_function("window.geoembed && window.geoembed.ready", timeout=120_000)
                paints.append(page.evaluate("window.geoembed.firstPaintMs") / 1000)
                sent.append(page.evaluate("performance.getEntriesByType('navigation').concat("
                                          "performance.getEntriesByType('resource')).reduce((s, e) => s + e.transferSize, 0)"))
                view = page.evaluate("window.geoembed.map.getBounds().toArray().flat()")
                if load < args.loads - 1:  # the last page stays open for the clicks
                    context.close()
            # Clicks on random product cells inside the initial view, on the last page.
            rng = np.random.default_rng(0)
            meta = json.loads(_get(f"{url}/api/map/cells?product={args.product}&max_cells=1")[0])
            targets = []
            box = page.locator("#map").bounding_box()
            while len(targets) < args.clicks:
                lon, lat = rng.uniform(view[0], view[2]), rng.uniform(max(view[1], -60), min(view[3], 75))
                cell = h3i.latlng_to_cell(lat, lon, meta["product_resolution"])
                status, _ = _status(f"{url}/api/cells/{cell:x}?product={args.product}")
                if status == 200:
                    targets.append((lon, lat))
            clicks, api = [], []
            for lon, lat in targets:
                x, y = page.evaluate(f"(() => {{ const p = window.geoembed.map.project([{lon}, {lat}]); return [p.x, p.y]; }})()")
                done = page.evaluate("window.geoembed.clicks.length")
                page.mouse.click(box["x"] + x, box["y"] + y)
                page.wait_for_function(f"window.geoembed.clicks.length > {done}", timeout=120_000)
                clicks.append(page.evaluate("window.geoembed.clicks.at(-1).ms") / 1000)
                query = urllib.parse.urlencode({"product": args.product, "lon": f"{lon:.6f}", "lat": f"{lat:.6f}", "k": args.k})
                api.append(_get(f"{url}/api/similar?{query}")[1])
            # The same searches started by the page's own code (no mouse events): what the input frames cost.
            direct = []
            for lon, lat in targets:
                done = page.evaluate("window.geoembed.clicks.length")
                page.evaluate(f"searchAt({lon}, {lat})")
                page.wait_for_function(f"window.geoembed.clicks.length > {done}", timeout=120_000)
                direct.append(page.evaluate("window.geoembed.clicks.at(-1).ms") / 1000)
            SHOTS.mkdir(exist_ok=True)
            page.locator("#map").screenshot(path=str(SHOTS / "map_last_click.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    p50_paint = statistics.median(paints)
    c50, c95 = _percentiles(clicks)
    a50, a95 = _percentiles(api)
    d50, d95 = _percentiles(direct)
    figures |= {"first_paint_s": paints, "first_paint_median_s": p50_paint, "initial_bytes": sent,
                "all_cells_bytes_raw": raw_all, "all_cells_bytes_gzip": gzip_all,
                "click_to_highlight_p50_s": c50, "click_to_highlight_p95_s": c95, "search_to_highlight_p50_s": d50,
                "search_to_highlight_p95_s": d95, "api_similar_p50_s": a50,
                "api_similar_p95_s": a95}
    rows = [
        ("colour layer ready after start", f"{figures['layer_ready_after_start_s']:.2f} s", "", ""),
        ("first map paint (median of %d)" % args.loads, f"{p50_paint:.2f} s", "goal 2 s", f"{p50_paint / 2:.2f}x goal"),
        ("bytes for the initial view", f"{statistics.median(sent) / 1e6:.2f} MB",
         f"every cell at once: {gzip_all / 1e6:.2f} MB gzip ({raw_all / 1e6:.1f} MB raw)",
         f"{statistics.median(sent) / gzip_all:.3f}"),
        (f"click-to-highlight p50 / p95 ({args.clicks} clicks)", f"{c50 * 1000:.0f} / {c95 * 1000:.0f} ms",
         f"API alone p50 / p95: {a50 * 1000:.0f} / {a95 * 1000:.0f} ms", f"{c50 / a50:.1f}x"),
        ("the same searches without mouse events", f"{d50 * 1000:.0f} / {d95 * 1000:.0f} ms",
         "(the page's searchAt: no frame drawn for the input)", f"{d50 / a50:.1f}x"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, ours, baseline, ratio in rows:
        print(f"{label:<{width}}  {ours:>14}  {baseline:<58} {ratio}")
    print(f"last click: {SHOTS / 'map_last_click.png'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _status(url: str) -> tuple[int, bytes]:
    try:
        body, _ = _get(url)
        return 200, body
    except urllib.error.HTTPError as error:
        return error.code, error.read()


if __name__ == "__main__":
    main()
