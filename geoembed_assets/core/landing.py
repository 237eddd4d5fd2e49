"""The landing sensor, for every pipeline: refresh exactly what newly landed files touch.

Each evaluation lists a product's landing location (a local directory or an s3:// prefix) and
compares it with its cursor ({file: [fingerprint, content version]}):

1. New or changed files (content, not just a touch): the sensor records a new data version of the
   source (an observation) and requests a run of the product's *scan* asset (the land-cover stencil,
   the imagery scene catalog). That run reads only those files, registers new partitions and lists,
   in its metadata, the partitions whose source data changed. Removed files are reported (sensor log
   and observation metadata) and handled by the same run.
2. When such a scan run has finished, the sensor requests runs for exactly the partitions it listed
   (the pipeline says how: partition ranges, single partitions).

Unchanged files never trigger again; only files whose size or modification time changed are read.
"""

import time
from dataclasses import dataclass
from typing import Callable

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from geoembed.core import sources
from geoembed.core.errors import InputError
from geoembed_resources import ProductStorage, RasterReader

# Tag on the runs the landing sensor requests (the scan asset reports it back in its metadata).
LANDING_TAG = "geoembed/landing_sensor"
# Stop reading new files after this long in one evaluation (Dagster's sensor timeout is 60 s);
# the rest are read on the next tick.
VERSIONING_BUDGET_SECONDS = 30.0


def landing_sensor_name(product: str) -> str:
    return f"{product}_landing_sensor"


@dataclass(frozen=True)
class LandingSensorSpec:
    """What differs between pipelines' landing sensors."""

    product: str
    location: str  # for messages
    minimum_interval_seconds: int
    source_key: dg.AssetKey  # the observable source whose data version the sensor records
    scan_key: dg.AssetKey  # the asset that rescans the location and lists changed partitions
    changed_metadata_key: str  # where the scan run lists them
    targets: tuple[dg.AssetKey, ...]  # every asset the sensor may request
    list_files: Callable[[RasterReader], list[sources.SourceFile]]
    known_files: Callable[[ProductStorage], dict[str, tuple[str, str]]]  # what the last scan saw
    refresh: Callable[[dg.SensorEvaluationContext, ProductStorage, set[str], int], list[dg.RunRequest]]
    description: str


def build_landing_sensor(spec: LandingSensorSpec) -> dg.SensorDefinition:
    sensor_name = landing_sensor_name(spec.product)

    @dg.sensor(name=sensor_name, minimum_interval_seconds=spec.minimum_interval_seconds,
               target=dg.AssetSelection.assets(spec.scan_key, *spec.targets), description=spec.description)
    def landing_sensor(context: dg.SensorEvaluationContext, raster_reader: RasterReader, storage: ProductStorage):
        started = time.monotonic()
        known, state = sources.decode_cursor(context.cursor)
        if not context.cursor:
            # First evaluation: what the product was last built from counts as seen.
            known = spec.known_files(storage)
        try:
            listing = spec.list_files(raster_reader)
        except InputError as exc:  # the location itself is wrong: one line in the UI, the cursor kept
            context.log.error(str(exc))
            return dg.SensorResult(skip_reason=str(exc), cursor=context.cursor)
        listed = time.monotonic()
        changes = sources.diff_landing(known, listing, deadline=started + VERSIONING_BUDGET_SECONDS)
        known = sources.advance_cursor(known, changes)
        run_requests: list[dg.RunRequest] = []
        asset_events: list[dg.AssetObservation] = []
        if changes.rejected:  # reported on every tick while they stay; they never stop the others
            context.log.warning(f"{len(changes.rejected)} entries of {spec.location} cannot be used: "
                                f"{dict(list(changes.rejected.items())[:20])}")
        if changes.removed:
            context.log.warning(f"{len(changes.removed)} files were removed from {spec.location}: "
                                f"{changes.removed[:20]}; the next scan handles what only they covered")
        if changes.any:
            manifest = sources.manifest_version(
                [sources.SourceFile(n, "", 0, 0, version=v) for n, (_, v) in known.items()])
            asset_events.append(dg.AssetObservation(
                asset_key=spec.source_key,
                tags={DATA_VERSION_TAG: manifest},
                metadata={
                    "files": len(known),
                    "added": dg.MetadataValue.json([f.name for f in changes.added][:100]),
                    "changed": dg.MetadataValue.json([f.name for f in changes.changed][:100]),
                    "removed": dg.MetadataValue.json(changes.removed[:100]),
                    "rejected": dg.MetadataValue.json(dict(list(changes.rejected.items())[:100])),
                    "observed_by": sensor_name,
                },
            ))
            run_requests.append(dg.RunRequest(run_key=f"scan:{manifest}", asset_selection=[spec.scan_key],
                                              tags={LANDING_TAG: sensor_name}))
        # Stage 2: scan runs this sensor asked for that have finished since the last look.
        last_id = int(state.get("stencil_storage_id", 0))
        changed: set[str] = set()
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=spec.scan_key, after_storage_id=last_id), limit=1000, ascending=True
        ).records
        for record in records:
            last_id = max(last_id, record.storage_id)
            metadata = record.asset_materialization.metadata if record.asset_materialization else {}
            trigger = metadata.get("trigger")
            if trigger is None or trigger.value != sensor_name:
                continue  # a scan someone else ran: its runs refresh what they need themselves
            changed.update(metadata[spec.changed_metadata_key].value)
        if changed:
            run_requests += spec.refresh(context, storage, changed, last_id)
        elapsed = time.monotonic() - started
        context.log.info(
            f"{len(listing)} files listed in {listed - started:.2f} s; {len(changes.added)} added, "
            f"{len(changes.changed)} changed, {len(changes.touched)} touched, {len(changes.removed)} removed, "
            f"{len(changes.pending)} left for the next tick; {len(changed)} partitions to refresh; {elapsed:.2f} s")
        cursor = sources.encode_cursor(known, {"stencil_storage_id": last_id})
        if not run_requests and not asset_events:
            return dg.SensorResult(skip_reason=f"no new or changed files among {len(listing)}", cursor=cursor)
        return dg.SensorResult(run_requests=run_requests, asset_events=asset_events, cursor=cursor)

    return landing_sensor
