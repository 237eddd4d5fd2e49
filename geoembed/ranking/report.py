"""The diagnostics report of one station's ranking model (the seed's prediction-report.R, as one HTML file
with its figures inline): Kendall tau between score and the observed series per split and on daily means,
beside an untrained model and mean image brightness; loss curves; score-vs-observed scatter; the time
series; rank residuals over time; annotation counts."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from geoembed.core.render import figure_png  # noqa: E402
from geoembed.ranking.dataset import IMAGE_SPLITS  # noqa: E402

REPORT_SPLITS = (*IMAGE_SPLITS, "all")
SPLIT_COLOURS = {"train": "#1f77b4", "validation": "#ff7f0e", "test_in": "#2ca02c", "test_out": "#9467bd"}


def tau(score: np.ndarray, value: np.ndarray) -> tuple[float | None, int]:
    """Kendall tau-b of score against observed value over the images that have both (None below 3)."""
    ok = np.isfinite(score) & np.isfinite(value)
    if ok.sum() < 3:
        return None, int(ok.sum())
    result = kendalltau(score[ok], value[ok])
    return (None if np.isnan(result.statistic) else float(result.statistic)), int(ok.sum())


def daily_means(predictions: pd.DataFrame, column: str, timezone: str) -> pd.DataFrame:
    """Mean ``column`` and mean observed value per local day (days with a value)."""
    day = predictions["timestamp"].dt.tz_convert(timezone).dt.date
    frame = pd.DataFrame({"day": day, "score": predictions[column], "value": predictions["value"],
                          "split": predictions["split"]})
    return frame.groupby("day", as_index=False).agg(score=("score", "mean"), value=("value", "mean"))


def tau_table(predictions: pd.DataFrame, columns: dict[str, str], timezone: str) -> dict[str, dict]:
    """{ranker: {split: {"tau", "n"}, "daily": {...}}} over the daytime images of each split (and all)."""
    day = predictions[predictions["daytime"]]
    table: dict[str, dict] = {}
    for name, column in columns.items():
        rows = {}
        for split in REPORT_SPLITS:
            part = day if split == "all" else day[day["split"] == split]
            t, n = tau(part[column].to_numpy(float), part["value"].to_numpy(float))
            rows[split] = {"tau": None if t is None else round(t, 4), "n": n}
        daily = daily_means(day, column, timezone)
        t, n = tau(daily["score"].to_numpy(float), daily["value"].to_numpy(float))
        rows["daily_means"] = {"tau": None if t is None else round(t, 4), "n": n}
        table[name] = rows
    return table


@dataclass
class ReportInputs:
    title: str
    station: dict
    model: dict  # code, version, variable, lineage...
    counts: dict
    predictions: pd.DataFrame  # image_id, timestamp, value, split, daytime, score, untrained, brightness
    epochs: list[dict]  # epoch, train_loss, validation_loss, validation_pair_accuracy
    taus: dict
    timezone: str


def loss_curves_png(epochs: list[dict]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    x = [e["epoch"] + 1 for e in epochs]
    ax.plot(x, [e["train_loss"] for e in epochs], marker="o", label="train")
    ax.plot(x, [e["validation_loss"] for e in epochs], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pair loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure_png(fig)


def _scatter_png(predictions: pd.DataFrame, variable: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for split, colour in SPLIT_COLOURS.items():
        part = predictions[(predictions["split"] == split) & predictions["daytime"]]
        ax.scatter(part["value"], part["score"], s=9, alpha=0.7, c=colour, label=f"{split} ({len(part)})")
    ax.set_xlabel(f"observed {variable}")
    ax.set_ylabel("model score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def _series_png(predictions: pd.DataFrame, variable: str) -> bytes:
    day = predictions[predictions["daytime"]].sort_values("timestamp")

    def z(v: pd.Series) -> pd.Series:
        return (v - v.mean()) / (v.std() or 1.0)

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    ax.plot(day["timestamp"], z(day["value"]), lw=0.8, label=f"observed {variable} (z)")
    ax.plot(day["timestamp"], z(day["score"]), lw=0.8, alpha=0.8, label="score (z)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def _residual_png(predictions: pd.DataFrame) -> bytes:
    """Rank residuals over time: the score's percentile minus the observed value's, per daytime image (a
    run of one sign shows when the model drifts from the series)."""
    day = predictions[predictions["daytime"] & np.isfinite(predictions["value"])]
    residual = day["score"].rank(pct=True) - day["value"].rank(pct=True)
    fig, ax = plt.subplots(figsize=(9, 3.0), dpi=100)
    for split, colour in SPLIT_COLOURS.items():
        part = day["split"] == split
        ax.scatter(day["timestamp"][part], residual[part], s=8, c=colour, alpha=0.8, label=split)
    ax.axhline(0, color="#444", lw=0.8)
    ax.set_ylabel("score percentile - observed percentile")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=4)
    return figure_png(fig)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(inputs: ReportInputs) -> str:
    """The whole report as one self-contained HTML page."""
    variable = inputs.model.get("variable", "value")
    splits = [*REPORT_SPLITS, "daily_means"]
    tau_rows = [[name, *[inputs.taus[name][s]["tau"] for s in splits]] for name in inputs.taus]
    n_row = ["images (n)", *[next(iter(inputs.taus.values()))[s]["n"] for s in splits]]
    epochs = [[e["epoch"] + 1, round(e["train_loss"], 4), round(e["validation_loss"], 4),
               round(e["validation_pair_accuracy"], 3)] for e in inputs.epochs]
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(inputs.title)}</title><style>{style}</style></head><body>",
        f"<h1>{html.escape(inputs.title)}</h1>",
        "<h2>Model</h2>", _table(["field", "value"], [[k, v] for k, v in {**inputs.station, **inputs.model}.items()]),
        "<h2>Kendall &tau; between score and observed value</h2>",
        "<p>Daytime images only (the filters the model was trained under); daily_means: per local day.</p>",
        _table(["ranker", *splits], [*tau_rows, n_row]),
        "<h2>Annotations and images</h2>", _table(["count", "value"], [[k, v] for k, v in inputs.counts.items()]),
        "<h2>Training</h2>", _img(loss_curves_png(inputs.epochs), "loss curves"),
        _table(["epoch", "train loss", "validation loss", "validation pair accuracy"], epochs),
        "<h2>Score against observed value</h2>", _img(_scatter_png(inputs.predictions, variable), "scatter"),
        "<h2>Time series</h2>", _img(_series_png(inputs.predictions, variable), "time series"),
        "<h2>Rank residuals</h2>", _img(_residual_png(inputs.predictions), "rank residuals"),
        "</body></html>",
    ])
