import h3.api.basic_int as h3i
import numpy as np

from geoembed.core.evaluation import (
    HEADLINE_TASK, EvaluationTable, HeldOutTargets, evaluate_features, knn_balanced_accuracy, linear_probe_r2,
    pca_features, principal_rgb, retrieval_precision, split_regions,
)
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


def test_linear_probe_and_retrieval_on_known_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    fractions = np.eye(3)[y] * 0.8 + rng.random((400, 3)) * 0.2
    # Features linear in the fractions: the probe recovers them; noise features explain nothing.
    mixed = fractions @ rng.normal(size=(3, 8))
    assert linear_probe_r2(mixed[:300], fractions[:300], mixed[300:], fractions[300:]) > 0.99
    assert linear_probe_r2(rng.random((300, 8)), fractions[:300], rng.random((100, 8)), fractions[300:]) < 0.05
    # Retrieval: well-separated classes give precision 1; random features give about 1/3.
    assert retrieval_precision(np.eye(3)[y] * 10 + rng.random((400, 3)), y, 10) == 1.0
    assert abs(retrieval_precision(rng.random((400, 4)), y, 10) - 1 / 3) < 0.08
    # The query itself never counts, even among exact duplicates.
    assert retrieval_precision(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 3) == 1 / 3


def test_evaluation_table_beats_every_baseline_only_on_the_headline_task():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 600)
    fractions = np.eye(4)[y] * 0.3 + rng.random((600, 4)) * 0.7  # a noisy view of the label
    targets = HeldOutTargets(y, fractions, {"mean_elevation": fractions[:, 0] * 100})
    tr, te = np.arange(400), np.arange(400, 600)
    features = {"trained": np.eye(4)[y] * 5 + rng.random((600, 4)), "untrained": rng.random((600, 4)),
                "pca_of_class_fractions": fractions}
    table = EvaluationTable({name: evaluate_features(x[tr], targets.rows(tr), x[te], targets.rows(te))
                             for name, x in features.items()})
    assert set(table.scores["trained"]) == {HEADLINE_TASK, "class_fractions_linear_r2", "retrieval_precision_at_10",
                                            "mean_elevation_linear_r2"}
    assert table.baselines == ["untrained", "pca_of_class_fractions"]
    assert table.scores["trained"][HEADLINE_TASK] == 1.0 and table.beats_every_baseline()
    assert table.margin() == round(1.0 - table.scores["pca_of_class_fractions"][HEADLINE_TASK], 4) > 0
    assert table.scores["untrained"]["class_fractions_linear_r2"] < 0.1
    assert "| trained | 1.0000 |" in table.markdown()
    worse = EvaluationTable({**table.scores, "trained": table.scores["untrained"]})
    assert not worse.beats_every_baseline() and worse.margin() < 0
