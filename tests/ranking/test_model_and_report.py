"""The ranking model on hand-made images (it learns what orders them; saved and loaded, it scores the same),
and the report's Kendall tau against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from geoembed.ranking.model import load_ranker, mean_brightness, new_ranker, save_ranker, score, train_ranker
from geoembed.ranking.report import ReportInputs, daily_means, render_report, tau, tau_table
from geoembed.ranking.settings import RankingTraining


def _water_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey-green 32 px images with a dark blue band whose height is the 'water level', under random
    illumination (so brightness alone cannot rank them)."""
    level = rng.uniform(0, 1, n)
    images = np.empty((n, 3, 32, 32), np.float32)
    for i in range(n):
        images[i] = rng.uniform(0.35, 0.6, (3, 1, 1)) + rng.normal(0, 0.03, (3, 32, 32))
        rows = int(round(level[i] * 32))
        images[i, :, 32 - rows:, :] = np.array([0.05, 0.1, 0.25])[:, None, None]
        images[i] *= rng.uniform(0.6, 1.4)
    return np.clip(images, 0, 1), level


def test_ranker_learns_to_rank_by_what_the_annotations_say():
    rng = np.random.default_rng(0)
    images, level = _water_images(120, rng)
    a, b = rng.integers(0, 100, 600), rng.integers(0, 100, 600)
    keep = a != b
    a, b = a[keep], b[keep]
    labels = np.sign(level[a] - level[b]).astype(np.int64)
    train = np.isin(a, np.arange(80)) & np.isin(b, np.arange(80))
    val = np.isin(a, np.arange(80, 100)) & np.isin(b, np.arange(80, 100))
    a, b, labels, train = a[train | val], b[train | val], labels[train | val], train[train | val]
    config = RankingTraining(epochs=12, optimizer="adam", image_size=32, backbone_width=8, hidden=[16],
                             freeze_backbone_epochs=1, batch_size=32)
    trained = train_ranker(images, a, b, labels, train, config)
    held_out = np.arange(100, 120)  # never in a pair
    t_trained, _ = tau(score(trained.model, images[held_out]), level[held_out])
    t_untrained, _ = tau(score(new_ranker(trained.model.spec, 0, images[:80]), images[held_out]), level[held_out])
    assert t_trained > 0.6 and t_trained > t_untrained + 0.2
    assert trained.epochs[0].backbone_frozen and not trained.epochs[-1].backbone_frozen
    best = min(range(len(trained.epochs)), key=lambda e: trained.epochs[e].validation_loss)
    assert trained.best_epoch == best  # the kept model is the best validation epoch's
    restored, _ = load_ranker(save_ranker(trained.model, {}))
    np.testing.assert_allclose(score(restored, images), score(trained.model, images), rtol=1e-5, atol=1e-5)
    again = train_ranker(images, a, b, labels, train, config)
    assert again.version == trained.version  # content-hash version, reproducible from the seed


def test_tau_is_scipys_kendall_tau_b_over_images_with_a_value():
    rng = np.random.default_rng(1)
    s, v = rng.normal(size=50), rng.normal(size=50)
    v[::7] = np.nan
    ok = np.isfinite(v)
    value, n = tau(s, v)
    assert n == ok.sum() and value == pytest.approx(kendalltau(s[ok], v[ok]).statistic)
    assert tau(s[1:3], v[1:3]) == (None, 2)  # below 3 images: no tau


def _predictions(rng: np.random.Generator) -> pd.DataFrame:
    n = 96
    stamps = pd.date_range("2017-03-01 06:00", periods=n, freq="5h", tz="UTC")
    value = rng.uniform(0, 100, n)
    return pd.DataFrame({"image_id": [str(i) for i in range(n)], "timestamp": stamps, "value": value,
                         "split": np.resize(["train", "train", "validation", "test_in", "test_out"], n),
                         "daytime": stamps.tz_convert("Europe/Berlin").hour.isin(range(7, 19)),
                         "score": value + rng.normal(0, 20, n), "untrained_score": rng.normal(size=n),
                         "brightness": rng.uniform(size=n)})


def test_tau_table_per_split_and_daily_means_matches_scipy():
    predictions = _predictions(np.random.default_rng(2))
    table = tau_table(predictions, {"model": "score", "untrained model": "untrained_score"}, "Europe/Berlin")
    day = predictions[predictions["daytime"]]
    for split in ("train", "validation", "test_in", "test_out"):
        part = day[day["split"] == split]
        assert table["model"][split]["tau"] == pytest.approx(kendalltau(part["score"], part["value"]).statistic, abs=1e-4)
        assert table["model"][split]["n"] == len(part)
    assert table["model"]["all"]["n"] == len(day)
    daily = daily_means(day, "score", "Europe/Berlin")
    assert table["model"]["daily_means"]["tau"] == pytest.approx(
        kendalltau(daily["score"], daily["value"]).statistic, abs=1e-4)
    assert len(daily) == day["timestamp"].dt.tz_convert("Europe/Berlin").dt.date.nunique()


def test_report_is_one_page_with_the_tau_table_and_four_figures():
    predictions = _predictions(np.random.default_rng(3))
    taus = tau_table(predictions, {"model": "score", "mean brightness": "brightness"}, "Europe/Berlin")
    epochs = [{"epoch": e, "train_loss": 0.6 - e / 20, "validation_loss": 0.65 - e / 30,
               "validation_pair_accuracy": 0.5 + e / 20} for e in range(5)]
    page = render_report(ReportInputs("S1: RANK", {"id": "1", "name": "S1"}, {"model_code": "RANK", "variable": "X"},
                                      {"train_pairs": 10}, predictions, epochs, taus, "Europe/Berlin"))
    assert page.startswith("<!doctype html>") and page.count("<img ") == 4
    assert f"<td>{taus['model']['validation']['tau']}</td>" in page and "daily_means" in page
    assert mean_brightness(np.ones((2, 3, 4, 4), np.float32)).tolist() == [1.0, 1.0]
