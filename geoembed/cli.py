"""`geoembed` command line: run the main job for one or more products."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from geoembed.grid import PartitionKeyError
from geoembed.raster import RasterInputError
from geoembed.settings import DEFAULT_PRODUCT_FILE, ProductConfigError, load_settings

EXIT_USAGE = 2


def _run(args: argparse.Namespace) -> int:
    # Dagster is imported here so that `geoembed --help` stays fast.
    import dagster as dg

    from geoembed_assets.run import ensure_dagster_home, materialize_product

    products = [load_settings(p) for p in (args.product or [DEFAULT_PRODUCT_FILE])]
    if args.data_dir:
        os.environ["GEOEMBED_DATA_DIR"] = str(Path(args.data_dir).resolve())
    home = ensure_dagster_home(Path(args.dagster_home or Path.cwd() / ".dagster"))
    with dg.DagsterInstance.get() as instance:
        for settings in products:
            run_config = None
            if args.steps is not None:  # the model asset's op is named after its key
                run_config = {"ops": {f"{settings.name}__embedding_model": {"config": {"steps": args.steps}}}}
            summary = materialize_product(settings, instance, run_config=run_config)
            print(f"\n[geoembed] {summary.product} done in {summary.seconds:,.0f} s "
                  f"(peak memory {summary.peak_rss_mb:,.0f} MB); Dagster home {home}")
            print(f"  regions (partitions): {summary.regions}   cells: {summary.cells:,}   embedded: {summary.embedded_cells:,}")
            print(f"  model {summary.model_version}; quality (kNN k=5 balanced accuracy, held-out regions):")
            for line in summary.quality.splitlines()[4:]:
                print(f"    {line}")
            for step in summary.steps:
                print(f"  {step.name:<16} {step.seconds:8.1f} s  ({step.runs} run{'s' if step.runs > 1 else ''})")
            print("  outputs:")
            for label, path in summary.outputs.items():
                print(f"    {label:<26} {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geoembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize a product's whole asset graph (the main job)")
    run.add_argument("--product", action="append", help="product settings YAML (repeatable; default: global MODIS)")
    run.add_argument("--data-dir", help="output folder (default: $GEOEMBED_DATA_DIR or ./data)")
    run.add_argument("--dagster-home", help="Dagster instance folder (default: $DAGSTER_HOME or ./.dagster)")
    run.add_argument("--steps", type=int, help="training steps (default: the model asset's default)")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except Exception as exc:  # noqa: BLE001 - input errors get a message, anything else a traceback
        user_error = _input_error(exc)
        if user_error is None:
            raise
        print(f"geoembed: {user_error}", file=sys.stderr)
        return EXIT_USAGE


def _input_error(exc: BaseException | None) -> BaseException | None:
    """The bad-input error behind an exception (Dagster wraps errors raised inside runs)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (ProductConfigError, RasterInputError, PartitionKeyError)):
            return exc
        exc = getattr(exc, "user_exception", None) or exc.__cause__
        seen += 1
    return None


if __name__ == "__main__":
    sys.exit(main())
