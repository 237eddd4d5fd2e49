"""Dagster's own overhead per partition in a backfill of up to 1,024 partitions.

    python -m benchmarks.backfill_bench [--partitions 1024] [--concurrency 1]

The global product at H3 resolution 5 (products/modis_global_res5.yaml: 489 region partitions since its
regions became res-1 cells over a res-2 stencil; 2,562 when the README's figures were measured):
the stencil is built in-process, then a real `dagster dev` (webserver + daemon, SQLite instance in a
temporary folder) gets a backfill of ``landcover_samples`` over the first N partitions through its
GraphQL API, as the UI launches one; the backfill policy makes runs of up to PARTITIONS_PER_RUN partitions (1,024; 256 when the figures in the README were measured).

  wall         backfill created -> backfill finished (Dagster's own timestamps)
  compute      the time spent in our asset code, summed over runs (each run's compute_seconds metadata)
  overhead     wall - compute (runs execute one at a time by default, so the two add up), per partition
  in runs      run start -> run end minus compute: process start, loading the code, resources, events
  between runs wall - the sum of run durations: daemon ticks, queueing, launching run workers
--concurrency N lets the queue start N runs at once (wall time and throughput; the split above is
only meaningful for serial runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.storage.tags import BACKFILL_ID_TAG

from geoembed.core.backfill import launch_backfill, serve_dagster, wait_for_backfill
from geoembed.landcover.settings import load_settings
from geoembed_assets.definitions import build_definitions, local_resources
from geoembed_resources import InferenceDevice

REPO = Path(__file__).resolve().parent.parent
PRODUCT = REPO / "products" / "modis_global_res5.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=1, help="max concurrent runs (default 1: serial)")
    parser.add_argument("--executor", choices=["in_process", "multiprocess"], default="in_process",
                        help="GEOEMBED_EXECUTOR of the runs (default in_process: steps in the run worker)")
    parser.add_argument("--keep", help="keep the instance and data in this folder (default: a temporary one)")
    args = parser.parse_args(argv)

    settings = load_settings(PRODUCT)
    name = settings.name
    with tempfile.TemporaryDirectory(prefix="backfill_bench_") as tmp:
        root = Path(args.keep or tmp)
        home, data = root / "home", root / "data"
        home.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        config["concurrency"]["runs"]["max_concurrent_runs"] = args.concurrency
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        env = {"DAGSTER_HOME": str(home), "GEOEMBED_PRODUCT": str(PRODUCT), "GEOEMBED_DATA_DIR": str(data),
               "GEOEMBED_EXECUTOR": args.executor}
        os.environ.update(env)
        os.environ.pop("GEOEMBED_PG_DSN", None)
        resources = local_resources(data, inference_device=InferenceDevice(device="cpu"))
        with dg.DagsterInstance.get() as instance:
            started = time.perf_counter()
            dg.materialize(list(build_definitions([settings], resources).assets),
                           selection=[dg.AssetKey([name, "h3_regions"])], instance=instance, resources=resources)
            partitions = instance.get_dynamic_partitions(f"{name}_regions")[: args.partitions]
            print(f"[backfill_bench] stencil: {len(partitions):,} of the product's partitions in "
                  f"{time.perf_counter() - started:.0f} s; starting dagster dev", flush=True)
            with serve_dagster("dagster", env, root / "dagster_dev.log") as url:
                backfill_id = launch_backfill(url, [f"{name}/landcover_samples"], partitions, title="backfill_bench")
                status = wait_for_backfill(url, backfill_id, timeout=3 * 3600, poll_seconds=1)
            if not status.succeeded:
                raise SystemExit(f"backfill failed: {status.summary()} {status.error or ''}")
            records = instance.get_run_records(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
            runs = []
            for record in records:
                logs = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                compute = logs[0].asset_materialization.metadata["compute_seconds"].value
                runs.append((record.end_time - record.start_time, compute, len(logs)))

    wall = status.ended - status.created
    compute = sum(c for _, c, _ in runs)
    in_runs = sum(d for d, _, _ in runs)
    overhead = wall - compute
    n = sum(k for _, _, k in runs)
    print(f"\nbackfill of {name}/landcover_samples: {n:,} partitions in {len(runs)} runs "
          f"(max {args.concurrency} at once; {args.executor} executor; 2 cores; dagster dev, SQLite)")
    print(f"{'':<36}{'seconds':>10}{'per partition':>16}")
    rows = [("wall (backfill created -> finished)", wall), ("compute (our asset code)", compute),
            ("overhead = wall - compute", overhead)]
    if args.concurrency == 1:  # runs one after another: the wall time splits into these parts
        rows += [("  in runs (process, code, events)", in_runs - compute),
                 ("  between runs (daemon, queue, launch)", wall - in_runs)]
    for label, seconds in rows:
        print(f"{label:<36}{seconds:>10.1f}{seconds / n * 1000:>13.1f} ms")
    durations = [d for d, _, _ in runs]
    print(f"run duration p50 {statistics.median(durations):.1f} s; {n / wall:.1f} partitions/s; "
          f"compute share of wall {compute / wall:.1%}; Dagster overhead per partition {overhead / n * 1000:.0f} ms "
          f"= {overhead / compute:.2f}x our compute")
    if args.concurrency > 1:
        print("(runs overlap: their compute competes for the cores, so compute here exceeds a serial run's)")

if __name__ == "__main__":
    main()
