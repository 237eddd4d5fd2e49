"""int8 embeddings: symmetric quantisation with one float32 scale per vector, and its inverse.

AlphaEarth and TESSERA publish int8 embeddings; users then need the exact dequantisation. Ours:

    embedding ~= embedding_int8 * embedding_scale[:, None]      (then L2-normalise for cosine search)

with ``embedding_scale = max(|v|) / 127`` per vector, so every vector uses the whole int8 range whatever
its direction. A per-dimension scale (one per component, fixed for the product) is the alternative;
``benchmarks/quantisation.py`` measures both, and the per-vector scale is what the product stores: it
needs no product-wide statistics before the first region is written and it kept recall and held-out
quality at least as well on modis_global (see the README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT8_LIMIT = 127  # symmetric: -127..127 (-128 unused, so negation is exact)
DEQUANTISATION = ("embedding = embedding_int8 * embedding_scale[:, None] (float32), then L2-normalise for cosine "
                  "search; rows whose embedding_scale is NaN have no vector")


@dataclass(frozen=True)
class Int8Vectors:
    codes: np.ndarray  # (n, d) int8
    scale: np.ndarray  # (n,) float32 per vector, or (d,) per dimension; NaN rows (per vector): no vector

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes)


def quantise_int8(vectors: np.ndarray, per: str = "vector", dimension_scale: np.ndarray | None = None) -> Int8Vectors:
    """Symmetric int8 codes of float vectors. ``per="vector"``: one scale per row (rows of NaN keep a NaN
    scale and zero codes); ``per="dimension"``: one scale per component, ``dimension_scale`` if given (so
    every region of a product shares it), else from these vectors."""
    vectors = np.asarray(vectors, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if per == "vector":
        peak = np.abs(np.where(finite[:, None], vectors, 0)).max(axis=1) if vectors.size else np.zeros(0, np.float32)
        scale = np.where(finite, np.maximum(peak, np.finfo(np.float32).tiny) / INT8_LIMIT, np.nan).astype(np.float32)
        codes = np.zeros(vectors.shape, dtype=np.int8)
        codes[finite] = np.clip(np.rint(vectors[finite] / scale[finite, None]), -INT8_LIMIT, INT8_LIMIT)
        return Int8Vectors(codes, scale)
    if per != "dimension":
        raise ValueError(f"per must be 'vector' or 'dimension', not {per!r}")
    if dimension_scale is None:
        dimension_scale = dimension_scales(vectors[finite])
    scale = np.asarray(dimension_scale, dtype=np.float32)
    codes = np.zeros(vectors.shape, dtype=np.int8)
    codes[finite] = np.clip(np.rint(vectors[finite] / scale[None, :]), -INT8_LIMIT, INT8_LIMIT)
    return Int8Vectors(codes, scale)


def dimension_scales(vectors: np.ndarray) -> np.ndarray:
    """One scale per component: its largest magnitude over ``vectors`` / 127."""
    peak = np.abs(vectors).max(axis=0) if len(vectors) else np.ones(vectors.shape[1], dtype=np.float32)
    return (np.maximum(peak, np.finfo(np.float32).tiny) / INT8_LIMIT).astype(np.float32)


def dequantise(codes: np.ndarray, scale: np.ndarray, per: str = "vector", normalise: bool = True) -> np.ndarray:
    """Float32 vectors from int8 codes and their scales (``per="vector"``: (n,), ``"dimension"``: (d,)),
    unit length unless ``normalise`` is False; rows with a NaN scale stay NaN."""
    codes = np.asarray(codes)
    scale = np.asarray(scale, dtype=np.float32)
    out = codes.astype(np.float32) * (scale[:, None] if per == "vector" else scale[None, :])
    if normalise:
        with np.errstate(invalid="ignore", divide="ignore"):
            out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
