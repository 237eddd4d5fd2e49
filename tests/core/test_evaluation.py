import h3.api.basic_int as h3i
import numpy as np

from geoembed.core.evaluation import knn_balanced_accuracy, pca_features, principal_rgb, split_regions
from geoembed.core.grids.h3 import cells_at


def test_held_out_regions_are_spatially_separate():
    regions = cells_at(1)
    split = split_regions(regions, 0.2, seed=0)
    assert len(split.train) + len(split.held_out) == len(regions)
    assert 0.1 < len(split.held_out) / len(regions) < 0.35
    parent = lambda r: h3i.cell_to_parent(int(r), split.group_resolution)  # noqa: E731
    assert not ({parent(r) for r in split.train} & {parent(r) for r in split.held_out})


def test_split_of_few_regions_holds_out_at_least_one():
    regions = np.array([h3i.latlng_to_cell(0.3, 6.6 + 0.1 * i, 5) for i in range(3)], dtype=np.uint64)
    split = split_regions(np.unique(regions), 0.2, seed=0)
    assert len(split.held_out) >= 1 and len(split.train) >= 1


def test_knn_and_pca_baseline_on_separable_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    fractions = np.eye(3)[y] * 0.8 + rng.random((300, 3)) * 0.2
    p_tr, p_te = pca_features(fractions[:200], fractions[200:], dim=2)
    assert knn_balanced_accuracy(p_tr, y[:200], p_te, y[200:]) > 0.95
    assert knn_balanced_accuracy(rng.random((200, 2)), y[:200], rng.random((100, 2)), y[200:]) < 0.6
    rgb = principal_rgb(fractions)
    assert rgb.shape == (300, 3) and rgb.min() >= 0 and rgb.max() <= 1
