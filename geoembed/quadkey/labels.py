"""Multilabel targets for chips from labelled polygons (OpenStreetMap land use, or any vector file): each
chip gets the share of its area every class covers, and the classes covering at least a configured share.

Shares are measured by rasterising each class's polygons onto the chip at ``LABEL_PIXELS`` per edge
(all-touched off: a pixel counts when its centre is inside), in the chip grid's CRS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio.features
from rasterio.transform import from_bounds

from geoembed.core.errors import InputError

LABEL_PIXELS = 128  # a 256 px chip's labels at half its resolution: shares to within ~1 %


class LabelInputError(InputError):
    """A label file that cannot give labels (missing, no such class field, covering no chip)."""


@dataclass(frozen=True)
class LabelPolygons:
    """Polygons with one class each, in the chip grid's CRS, and the classes in a fixed order."""

    location: str
    classes: tuple[str, ...]
    geometries: np.ndarray  # shapely geometries, in the chip grid's CRS
    class_index: np.ndarray  # (n,) index into classes


def read_label_polygons(location: str, class_field: str, crs: str, classes: list[str] | None = None) -> LabelPolygons:
    """The labelled polygons of a vector file (anything pyogrio reads), reprojected to ``crs``. ``classes``
    fixes the classes and their order (others are dropped); default: every value of the field, sorted."""
    import geopandas as gpd
    import pyogrio

    try:
        frame = gpd.read_file(location, engine="pyogrio")
    except (pyogrio.errors.DataSourceError, FileNotFoundError, OSError) as exc:
        raise LabelInputError(f"label file {location!r} cannot be read: {str(exc).strip()}") from None
    if class_field not in frame.columns:
        fields = [c for c in frame.columns if c != frame.geometry.name]
        raise LabelInputError(f"label file {location!r} has no class field {class_field!r} (its fields: {fields})")
    if frame.crs is None:
        raise LabelInputError(f"label file {location!r} has no CRS")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    frame = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    values = frame[class_field].astype(str)
    names = tuple(classes) if classes else tuple(sorted(values.unique()))
    if not names:
        raise LabelInputError(f"label file {location!r} holds no polygon with a {class_field!r} value")
    keep = values.isin(names).to_numpy()
    lookup = {name: i for i, name in enumerate(names)}
    frame = frame[keep].to_crs(crs)
    return LabelPolygons(location, names, frame.geometry.to_numpy(), np.array([lookup[v] for v in values[keep]]))


def chip_label_shares(labels: LabelPolygons, chip_bounds: np.ndarray, pixels: int = LABEL_PIXELS) -> np.ndarray:
    """(n chips, classes) share of each chip's area each class covers (overlapping polygons of one class
    count once)."""
    import shapely

    shares = np.zeros((len(chip_bounds), len(labels.classes)), dtype=np.float32)
    tree = shapely.STRtree(labels.geometries)
    for i, (xmin, ymin, xmax, ymax) in enumerate(chip_bounds):
        hits = tree.query(shapely.box(xmin, ymin, xmax, ymax))
        if len(hits) == 0:
            continue
        transform = from_bounds(xmin, ymin, xmax, ymax, pixels, pixels)
        for k in np.unique(labels.class_index[hits]):
            shapes = [(g, 1) for g in labels.geometries[hits][labels.class_index[hits] == k]]
            mask = rasterio.features.rasterize(shapes, out_shape=(pixels, pixels), transform=transform, fill=0,
                                               dtype="uint8")
            shares[i, k] = mask.mean()
    return shares


def multilabel_targets(shares: np.ndarray, min_share: float) -> np.ndarray:
    """(n, classes) bool: the classes covering at least ``min_share`` of each chip."""
    return shares >= min_share


def coverage_problem(labels: LabelPolygons, chips: int, touched: int) -> str:
    """Why labels that touch none of ``chips`` chips are a configuration error ("" when they touch some)."""
    if touched:
        return ""
    return (f"label file {labels.location!r}: its {len(labels.geometries)} polygons cover none of the {chips} chips "
            "(another area, or a wrong CRS?)")


def check_labels_cover_chips(labels: LabelPolygons, shares: np.ndarray) -> None:
    """Labels that cover no chip at all are a configuration error (wrong file, wrong area, wrong CRS)."""
    problem = coverage_problem(labels, len(shares), int((shares > 0).any(axis=1).sum()))
    if problem:
        raise LabelInputError(problem)
