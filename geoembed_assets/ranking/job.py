"""The ranking main job: materialize a product's asset graph as real runs on a Dagster instance (what the UI
would launch): the station catalog (registers station partitions), then one run per station making its
dataset, model, predictions and report. A station whose input is bad fails alone, with one line naming
the station and the file; the others are made."""

from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from geoembed.ranking.settings import RankingProductSettings
from geoembed_assets.core.runner import RunFailed, RunSummary, product_runner
from geoembed_assets.ranking.partitions import RankingKeys
from geoembed_assets.ranking.state import layout_of
from geoembed_resources.postgres import describe_database


@dataclass
class RankingRunSummary(RunSummary):
    stations: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)  # station -> {validation_tau, model_version, ...}
    failed: dict = field(default_factory=dict)  # station -> one-line error


def materialize_ranking_product(
    settings: RankingProductSettings,
    instance: dg.DagsterInstance,
    resources: dict | None = None,
    stations: list[str] | None = None,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> RankingRunSummary:
    """Materialize every asset of a ranking product for every station (or ``stations``) on ``instance``."""
    runner, resources = product_runner(settings, instance, resources, say, verbose)
    keys = RankingKeys(settings.name)
    summary = RankingRunSummary(settings.name, steps=runner.steps)
    runner.job("observe stations", keys.observe_job)
    catalog = runner.materialize("station catalog", keys.catalog)
    summary.stations = [s for s in catalog.get("stations", []) if stations is None or s in stations]
    say(f"[geoembed] {settings.name}: {len(summary.stations)} stations in {settings.stations}")
    for station in summary.stations:
        try:
            meta = runner.materialize_together("station", keys.per_station, partition_key=station)
        except RunFailed as failure:
            summary.failed[station] = str(failure)
            say(f"[geoembed] station {station} failed: {failure}")
            continue
        report, model, predictions = meta[keys.report], meta[keys.model], meta[keys.predictions]
        taus = report.get("taus") or {}
        summary.results[station] = {
            "model_version": model.get("model_version"), "validation_tau": report.get("validation_tau"),
            "untrained_validation_tau": (taus.get("untrained model") or {}).get("validation", {}).get("tau"),
            "brightness_validation_tau": (taus.get("mean brightness") or {}).get("validation", {}).get("tau"),
            "test_in_tau": (taus.get("model") or {}).get("test_in", {}).get("tau"),
            "test_out_tau": (taus.get("model") or {}).get("test_out", {}).get("tau"),
            "images_per_second": predictions.get("images_per_second"), "report": report.get("report"),
            "training_seconds": model.get("training_seconds")}
        say(f"[geoembed] station {station}: model {model.get('model_version')}, validation tau "
            f"{report.get('validation_tau')}; report {report.get('report')}")
    layout = layout_of(resources["storage"], settings)
    summary.outputs = {
        "stations (reports, predictions, models)": str(layout.outputs / "stations"),
        "PostgreSQL tables": f"geoembed.ranking_models, geoembed.ranking_predictions at "
                             f"{describe_database(resources['database'])}",
        "Dagster instance": str(instance.root_directory),
    }
    summary.finish()
    return summary
