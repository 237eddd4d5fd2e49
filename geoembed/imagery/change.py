"""Change over time: for every chip, the cosine similarity of each date's embedding to its first
date's (the baseline), and the chips whose similarity falls below a threshold flagged as changed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class DateEmbeddings:
    """The class-level embeddings of one tile on one date."""

    date: str  # YYYY-MM-DD
    chip_id: np.ndarray
    row: np.ndarray
    col: np.ndarray
    vectors: np.ndarray  # (n, dim)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def change_over_time(tile: str, series: list[DateEmbeddings], threshold: float) -> pa.Table:
    """One row per chip and date: the similarity to the chip's baseline (its first date with data; 1 on
    the baseline itself) and whether it fell below ``threshold``."""
    baseline: dict[str, tuple[str, np.ndarray]] = {}
    columns: dict[str, list] = {k: [] for k in ("chip_id", "row", "col", "date", "baseline_date", "similarity",
                                                "changed")}
    for entry in sorted(series, key=lambda e: e.date):
        ids = [str(c) for c in entry.chip_id]
        base_dates, base_vectors = [], []
        for i, chip in enumerate(ids):
            if chip not in baseline:
                baseline[chip] = (entry.date, entry.vectors[i])
            base_dates.append(baseline[chip][0])
            base_vectors.append(baseline[chip][1])
        similarity = cosine(entry.vectors, np.asarray(base_vectors)) if ids else np.zeros(0)
        columns["chip_id"] += ids
        columns["row"] += np.asarray(entry.row).tolist()
        columns["col"] += np.asarray(entry.col).tolist()
        columns["date"] += [np.datetime64(entry.date, "D")] * len(ids)
        columns["baseline_date"] += [np.datetime64(d, "D") for d in base_dates]
        columns["similarity"] += similarity.astype(np.float32).tolist()
        columns["changed"] += (similarity < threshold).tolist()
    n = len(columns["chip_id"])
    return pa.table({
        "tile": pa.array([tile] * n, pa.string()),
        "chip_id": pa.array(columns["chip_id"], pa.string()),
        "row": pa.array(columns["row"], pa.int32()),
        "col": pa.array(columns["col"], pa.int32()),
        "date": pa.array(np.array(columns["date"], dtype="datetime64[D]"), pa.date32()),
        "baseline_date": pa.array(np.array(columns["baseline_date"], dtype="datetime64[D]"), pa.date32()),
        "similarity": pa.array(columns["similarity"], pa.float32()),
        "changed": pa.array(columns["changed"], pa.bool_()),
    })


def change_plot(table: pa.Table, tile: str, threshold: float, max_dates: int = 6) -> bytes:
    """Maps of the tile's chips, one per date after the first, coloured by similarity to the baseline
    (changed chips outlined), and the share of changed chips per date."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoembed.core.render import figure_png

    data = table.to_pydict()
    dates = sorted(set(data["date"]))
    later = [d for d in dates if any(b != d for b, dd in zip(data["baseline_date"], data["date"]) if dd == d)]
    shown = later[:max_dates] or dates[:1]
    rows, cols = np.array(data["row"]), np.array(data["col"])
    extent = (cols.min(), cols.max() + 1, rows.max() + 1, rows.min()) if len(rows) else (0, 1, 1, 0)
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(3.2 * (len(shown) + 1), 3.4), dpi=100, squeeze=False,
                             layout="constrained")
    for ax, day in zip(axes[0], shown):
        grid = np.full((extent[2] - extent[3], extent[1] - extent[0]), np.nan)
        pick = np.array([d == day for d in data["date"]])
        similarity = np.array(data["similarity"])[pick]
        grid[rows[pick] - extent[3], cols[pick] - extent[0]] = similarity
        image = ax.imshow(grid, vmin=min(threshold - 0.2, float(np.nanmin(grid)) if pick.any() else 0), vmax=1.0,
                          cmap="viridis", extent=extent, interpolation="nearest")
        changed = np.array(data["changed"])[pick]
        ax.scatter(cols[pick][changed] + 0.5, rows[pick][changed] + 0.5, marker="s", facecolors="none",
                   edgecolors="red", s=40, linewidths=1.2)
        ax.set_title(f"{day} vs baseline", fontsize=9)
        ax.set_xlabel("chip column")
        ax.set_ylabel("chip row")
    fig.colorbar(image, ax=axes[0][: len(shown)].tolist(), shrink=0.8, label="cosine similarity")
    share = [np.mean([c for c, d in zip(data["changed"], data["date"]) if d == day]) for day in dates]
    axes[0][-1].bar(range(len(dates)), share, color="tab:red")
    axes[0][-1].set_xticks(range(len(dates)), [str(d) for d in dates], rotation=45, fontsize=7)
    axes[0][-1].set_ylim(0, 1)
    axes[0][-1].set_title(f"{tile}: share changed (< {threshold})", fontsize=9)
    return figure_png(fig)
