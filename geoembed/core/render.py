"""Pictures for the Dagster UI: maps of cells or chips (e.g. 3 principal components of the embeddings as
RGB, or the no-data index) and the loss curve."""

from __future__ import annotations

import base64
import io

import h3.api.basic_int as h3i
import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402


def hexagons(cells: np.ndarray) -> list[np.ndarray]:
    """Cell boundaries as (lon, lat) rings; rings crossing the antimeridian are unwrapped east."""
    rings = []
    for cell in cells:
        ring = np.array(h3i.cell_to_boundary(int(cell)))[:, ::-1]
        if np.ptp(ring[:, 0]) > 180:
            ring[ring[:, 0] < 0, 0] += 360
        rings.append(ring)
    return rings


def embedding_map_png(cells: np.ndarray, colours: np.ndarray, title: str, width_px: int = 900) -> bytes:
    """An RGB map of the cells, one colour (r, g, b in [0, 1]) per cell (e.g. ``principal_rgb`` of their
    embeddings). At most ``width_px`` wide, so it fits the Dagster UI's metadata dialog."""
    return polygons_map_png(hexagons(cells), colours, title, width_px)


def polygons_map_png(rings: list[np.ndarray], colours, title: str, width_px: int = 900,
                     legend: dict[str, object] | None = None, edges: str = "none") -> bytes:
    """A map of (lon, lat) polygons, one colour each (anything matplotlib takes), with an optional legend
    {label: colour} and edge colour."""
    lon = np.concatenate([r[:, 0] for r in rings]) if rings else np.array([-180, 180])
    lat = np.concatenate([r[:, 1] for r in rings]) if rings else np.array([-90, 90])
    west, east, south, north = lon.min(), lon.max(), lat.min(), lat.max()
    aspect = max(0.3, min(1.0, (north - south) / max(east - west, 1e-9) / np.cos(np.radians((north + south) / 2))))
    fig, ax = plt.subplots(figsize=(width_px / 100, width_px / 100 * aspect + 0.5), dpi=100)
    ax.add_collection(PolyCollection(rings, facecolors=colours, edgecolors=edges, linewidths=0.8,
                                     antialiased=edges != "none"))
    ax.set_xlim(west, min(east, west + 360))
    ax.set_ylim(south, north)
    ax.set_aspect(1 / np.cos(np.radians(np.clip((north + south) / 2, -80, 80))))
    ax.set_facecolor("#202020")
    if legend:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(facecolor=c, label=label) for label, c in legend.items()], loc="best", fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    return figure_png(fig)


def loss_curve_png(losses: list[float], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="step")
    window = max(1, len(losses) // 50)
    if window > 1 and len(losses) >= window:  # a running mean only when it averages something
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, lw=1.8, label=f"mean of {window}")
    ax.set_xlabel("training step")
    ax.set_ylabel("triplet loss")
    ax.set_title(title, fontsize=11)
    ax.legend()
    ax.grid(alpha=0.3)
    return figure_png(fig)


def figure_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    if fig.get_layout_engine() is None:  # figures laid out by their own engine keep it
        fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that the Dagster UI renders inline (the image travels inside the metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
