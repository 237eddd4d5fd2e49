"""Runs behind `geoembed run`: materializations on a real Dagster instance, as the UI would launch
them, timed per step, with partitioned assets in batches of partition ranges (one run per batch, as the
backfill policy batches a backfill). Each pipeline's main job is a sequence of these calls."""

from __future__ import annotations

import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from geoembed_assets.core.policies import PARTITIONS_PER_RUN
from geoembed_assets.core.timing import take_body_seconds

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
# Dagster's own log goes to the instance (the UI shows every event of every run); the console shows it
# only when asked (geoembed run --verbose). The user sees our progress lines and, on failure, one line.
QUIET, VERBOSE = "CRITICAL", "INFO"
# Failures of Dagster's machinery around ours: the error to report is the one they wrap.
_WRAPPERS = {"Failure", "RetryRequestedFromPolicy", "DagsterExecutionStepExecutionError",
             "DagsterMaxRetriesExceededError", "DagsterUserCodeExecutionError"}


def log_config(level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": level}}}}


class RunFailed(RuntimeError):
    """A run of the main job failed. ``str()`` is the error our code raised (one line); ``causes`` the
    class names of the errors behind it, deepest last."""

    def __init__(self, message: str, causes: list[str], run_id: str, step: str):
        super().__init__(message)
        self.causes, self.run_id, self.step = causes, run_id, step


def run_failure(result: dg.ExecuteInProcessResult, step: str) -> RunFailed:
    """The failure of a run, told by the error behind Dagster's wrappers (retries exhausted, Failure)."""
    for event in result.get_step_failure_events():
        chain, error = [], event.step_failure_data.error
        while error is not None:
            chain.append(error)
            error = error.cause
        ours = [e for e in chain if e.cls_name not in _WRAPPERS] or chain
        deepest = ours[-1]
        first_line = deepest.message.strip().splitlines()[0] if deepest.message.strip() else deepest.cls_name
        prefix = first_line.split(": ", 1)
        message = prefix[1] if len(prefix) == 2 and prefix[0].rsplit(".", 1)[-1] == deepest.cls_name else first_line
        return RunFailed(message, [e.cls_name for e in chain], result.run_id, step)
    return RunFailed(f"the {step} run failed (run {result.run_id}; see it in the Dagster UI)", [], result.run_id, step)


def ensure_dagster_home(default: Path, explicit: str | os.PathLike[str] | None = None) -> Path:
    """The Dagster instance folder: ``explicit`` (a flag) wins over $DAGSTER_HOME, which wins over
    ``default``; a new folder gets the project's dagster.yaml (local SQLite instance)."""
    home = Path(explicit or os.environ.get("DAGSTER_HOME") or default).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and REPO_DAGSTER_YAML.exists():
        shutil.copy(REPO_DAGSTER_YAML, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass
class StepTiming:
    name: str
    seconds: float  # wall time of the step's runs
    runs: int = 1
    in_assets: float = 0.0  # of which inside our asset bodies (our compute and our I/O); the rest is Dagster's

    @property
    def dagster_seconds(self) -> float:
        return max(self.seconds - self.in_assets, 0.0)


@dataclass
class RunSummary:
    """What a main job did: per-step timings, where the outputs are, peak memory."""

    product: str
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepTiming] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def dagster_seconds(self) -> float:
        """Wall time of the runs outside our asset bodies."""
        return sum(s.dagster_seconds for s in self.steps)

    def finish(self) -> None:
        self.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def materialization_metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    """The metadata values of ``key``'s (first) materialization in a run."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == key:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    return {}


@dataclass
class AssetRunner:
    """Materializes selections of ``definitions``' assets on ``instance`` and times every step."""

    definitions: dg.Definitions
    instance: dg.DagsterInstance
    resources: dict
    say: Callable[[str], None] = print
    steps: list[StepTiming] = field(default_factory=list)
    log_level: str = QUIET

    def _start(self) -> float:
        take_body_seconds()  # count only this run's asset bodies
        return time.perf_counter()

    def _timed(self, step: str, started: float) -> None:
        elapsed, in_assets = time.perf_counter() - started, take_body_seconds()
        previous = next((s for s in self.steps if s.name == step), None)
        if previous:
            previous.seconds += elapsed
            previous.in_assets += in_assets
            previous.runs += 1
        else:
            self.steps.append(StepTiming(step, elapsed, in_assets=in_assets))

    def job(self, step: str, job_name: str) -> dg.ExecuteInProcessResult:
        started = self._start()
        result = self.definitions.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, run_config=log_config(self.log_level), raise_on_error=False)
        self._timed(step, started)
        if not result.success:
            raise run_failure(result, step)
        return result

    def materialize(self, step: str, key: dg.AssetKey, tags: dict | None = None, config: dict | None = None,
                    partition_key: str | None = None) -> dict:
        """One run materializing ``key`` (all of it, one partition, or the partition range ``tags`` name);
        its metadata."""
        started = self._start()
        result = dg.materialize(list(self.definitions.assets or []), selection=[key], instance=self.instance,
                                resources=self.resources, run_config={**log_config(self.log_level), **(config or {})},
                                tags=tags or {}, partition_key=partition_key, raise_on_error=False)
        self._timed(step, started)
        if not result.success:
            raise run_failure(result, step)
        return materialization_metadata(result, key)

    def materialize_together(self, step: str, keys: Sequence[dg.AssetKey], partition_key: str | None = None
                             ) -> dict[dg.AssetKey, dict]:
        """One run materializing several assets (of one partition): one process start and code load for a
        chain of steps; the metadata of each."""
        started = self._start()
        result = dg.materialize(list(self.definitions.assets or []), selection=list(keys), instance=self.instance,
                                resources=self.resources, run_config=log_config(self.log_level),
                                partition_key=partition_key, raise_on_error=False)
        self._timed(step, started)
        if not result.success:
            raise run_failure(result, step)
        return {key: materialization_metadata(result, key) for key in keys}

    def materialize_partitions(self, step: str, key: dg.AssetKey, partitions: Sequence[str],
                               count: Callable[[dict], int], part_label: str = "regions", unit: str = "cells",
                               batch_size: int = PARTITIONS_PER_RUN, config: dict | None = None) -> int:
        """Every partition of ``key``, one run per range of ``batch_size`` consecutive partitions, saying
        how far it got after each run. ``count``: how many items (cells, chips) a run's metadata reports.
        ``partitions`` must be in the partitions definition's order (a range is first..last of it)."""
        done, start = 0, time.perf_counter()
        for first in range(0, len(partitions), batch_size):
            batch = list(partitions[first : first + batch_size])
            tags = {ASSET_PARTITION_RANGE_START_TAG: batch[0], ASSET_PARTITION_RANGE_END_TAG: batch[-1]}
            done += count(self.materialize(step, key, tags, config))
            rate = done / max(time.perf_counter() - start, 1e-9)
            self.say(f"[geoembed] {step}: {first + len(batch)}/{len(partitions)} {part_label}, {done:,} {unit}, "
                     f"{rate:,.0f} {unit}/s")
        return done


def product_runner(settings, instance: dg.DagsterInstance, resources: dict | None, say: Callable[[str], None],
                   verbose: bool) -> tuple[AssetRunner, dict]:
    """The runner of a product's main job: its Definitions with ``resources`` (default: the environment's)
    on ``instance``; Dagster's own log on the console when ``verbose``."""
    from geoembed_assets.definitions import build_definitions, default_resources  # definitions import the jobs' assets

    resources = resources or default_resources()
    defs = build_definitions([settings], resources)
    return AssetRunner(defs, instance, resources, say, log_level=VERBOSE if verbose else QUIET), resources

