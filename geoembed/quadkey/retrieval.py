"""Chip retrieval quality: precision@k of shared labels among each chip's nearest neighbours (cosine), beside
the same measure for the untrained backbone's features and its expectation under random retrieval."""

from __future__ import annotations

import numpy as np


def _queries(labels: list[set[str]], among: np.ndarray | None) -> list[int]:
    return [i for i, names in enumerate(labels) if names and (among is None or among[i])]


def precision_at_k(features: np.ndarray, labels: list[set[str]], k: int = 10, among: np.ndarray | None = None) -> float:
    """Mean over the chips with a label (those where ``among`` is true, e.g. held-out partitions; default
    all) of the share of their k nearest other chips (cosine, searched among every chip) that share at least
    one label with them. NaN when no query chip has a label."""
    queries = _queries(labels, among)
    if not queries or len(labels) < 2:
        return float("nan")
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    k = min(k, len(labels) - 1)
    scores = []
    for i in queries:
        similarity = unit @ unit[i]
        similarity[i] = -np.inf
        nearest = np.argpartition(-similarity, k - 1)[:k]
        scores.append(np.mean([bool(labels[i] & labels[j]) for j in nearest]))
    return float(np.mean(scores))


def random_precision(labels: list[set[str]], among: np.ndarray | None = None) -> float:
    """The expected precision@k of retrieving other chips at random: for each query chip with a label, the
    share of the other chips sharing a label with it (whatever k)."""
    queries = _queries(labels, among)
    if not queries or len(labels) < 2:
        return float("nan")
    return float(np.mean([sum(bool(labels[i] & labels[j]) for j in range(len(labels)) if j != i) / (len(labels) - 1)
                          for i in queries]))
