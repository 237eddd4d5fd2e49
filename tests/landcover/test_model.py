import io

import h3.api.basic_int as h3i
import numpy as np
import pytest
import torch

from geoembed.core.grids.h3 import region_cells
from geoembed.landcover.encoder import (
    CompositionDecoder,
    CropViews,
    EncoderSpec,
    TripletSampler,
    build_encoder,
    class_shares,
    embed,
    export_torchscript,
    load_checkpoint,
    model_version,
    save_checkpoint,
    train_crop_contrastive,
    train_triplet,
)
from geoembed.core.evaluation import linear_probe_r2
from geoembed.core.self_supervised import nt_xent, random_crops


@pytest.mark.parametrize("window", [8, 16, 32, 64])
def test_encoder_shapes_and_unit_norm(window):
    model = build_encoder(EncoderSpec(n_tokens=6, window_size=window, embedding_dim=24), seed=0).eval()
    windows = torch.randint(0, 6, (5, window, window))
    with torch.no_grad():
        z = model(windows)
    assert z.shape == (5, 24) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


def test_embed_keeps_the_last_partial_batch():
    model = build_encoder(EncoderSpec(n_tokens=4, window_size=16, embedding_dim=8), seed=0)
    windows = np.random.default_rng(0).integers(0, 4, (10, 16, 16)).astype(np.uint8)
    in_batches = embed(model, windows, torch.device("cpu"), batch_size=4, bf16=False)
    at_once = embed(model, windows, torch.device("cpu"), batch_size=64, bf16=False)
    assert in_batches.shape == (10, 8) and not np.isnan(in_batches).any()
    np.testing.assert_allclose(in_batches, at_once, atol=1e-5)


def _cells_of_two_regions():
    regions = [h3i.latlng_to_cell(10, 10, 2), h3i.latlng_to_cell(-30, 120, 2)]
    cells = np.concatenate([region_cells(r, 4) for r in regions])
    owner = np.concatenate([np.full(49, r, dtype=np.uint64) for r in regions])
    return cells, owner


def test_triplets_pair_neighbours_and_separate_regions():
    cells, owner = _cells_of_two_regions()
    sampler = TripletSampler(cells, owner, positive_rings=1, seed=3)
    anchor, positive, negative = sampler.sample(500)
    for a, p in zip(anchor, positive):
        assert h3i.grid_distance(int(cells[a]), int(cells[p])) == 1
    assert (owner[negative] != owner[anchor]).all()


def test_model_version_is_a_content_hash():
    spec = EncoderSpec(n_tokens=4, window_size=16, embedding_dim=8)
    assert model_version(build_encoder(spec, 0)) == model_version(build_encoder(spec, 0))
    assert model_version(build_encoder(spec, 0)) != model_version(build_encoder(spec, 1))


def test_training_lowers_the_loss_and_the_checkpoint_round_trips():
    cells, owner = _cells_of_two_regions()
    rng = np.random.default_rng(0)
    # Two regions with different class mixes: the triplet task is learnable.
    windows = np.where(owner[:, None, None] == owner[0], rng.integers(0, 2, (len(cells), 16, 16)),
                       rng.integers(2, 4, (len(cells), 16, 16))).astype(np.uint8)
    model = build_encoder(EncoderSpec(n_tokens=5, window_size=16, embedding_dim=8), seed=0)
    result = train_triplet(model, windows, TripletSampler(cells, owner, 1, 0), steps=60, batch_size=32,
                           learning_rate=3e-3, margin=1.0, seed=0)
    assert len(result.losses) == 60
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    restored, extra = load_checkpoint(save_checkpoint(model, {"note": "x"}))
    assert extra["note"] == "x" and model_version(restored) == model_version(model)
    scripted = torch.jit.load(io.BytesIO(export_torchscript(model)))
    sample = torch.from_numpy(windows[:4]).long()
    torch.testing.assert_close(scripted(sample), model(sample), atol=1e-5, rtol=1e-5)


def test_pooled_token_embedding_equals_embedding_every_pixel():
    model = build_encoder(EncoderSpec(n_tokens=7, window_size=64, embedding_dim=8), seed=0)
    windows = torch.randint(0, 7, (3, 64, 64))
    direct = torch.nn.functional.avg_pool2d(model.tokens(windows).permute(0, 3, 1, 2), 4)
    torch.testing.assert_close(model.embed_tokens(windows[:, None]), direct, atol=1e-5, rtol=1e-5)


def test_random_crops_are_resized_squares_of_the_sample():
    g = torch.Generator().manual_seed(0)
    # Each pixel holds its own (row, col) id: a crop shows which pixels it took.
    ids = torch.arange(16 * 16).reshape(16, 16)
    batch = ids.expand(50, 16, 16).clone()
    crops = random_crops(batch, g, min_share=0.5)
    assert crops.shape == batch.shape and crops.dtype == batch.dtype
    sides = set()
    for crop in crops:
        rows, cols = crop // 16, crop % 16
        # Rows are constant along a row and non-decreasing down the crop (nearest resize), likewise columns.
        assert (rows == rows[:, :1]).all() and (cols == cols[:1, :]).all()
        assert (rows[1:, 0] >= rows[:-1, 0]).all() and (cols[0, 1:] >= cols[0, :-1]).all()
        side = int(rows[-1, 0] - rows[0, 0]) + 1
        assert side == int(cols[0, -1] - cols[0, 0]) + 1 and 8 <= side <= 16  # a square, >= half the edge
        sides.add(side)
    assert len(sides) > 3
    assert torch.equal(random_crops(batch, g, min_share=1.0), batch)  # a full-size crop is the sample
    # Leading channel dimensions are cropped alike.
    stacked = torch.stack([batch, batch + 1000], dim=1)
    both = random_crops(stacked, torch.Generator().manual_seed(1), 0.5)
    assert torch.equal(both[:, 1], both[:, 0] + 1000)


def test_nt_xent_prefers_aligned_views():
    z = torch.nn.functional.normalize(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    other = torch.nn.functional.normalize(torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    assert nt_xent(z, z, 0.2) < nt_xent(z, other, 0.2)
    # With 2N - 1 candidates, a loss at chance is log(2N - 1).
    flat = torch.nn.functional.normalize(torch.ones(32, 8), dim=1)
    assert abs(float(nt_xent(flat, flat, 0.2)) - float(np.log(63))) < 1e-4


def test_class_shares_count_every_token_of_each_window():
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 5, (7, 12, 12)))
    shares = class_shares(ids, 6)
    expected = np.stack([np.bincount(w.ravel(), minlength=6) / 144 for w in ids.numpy()])
    np.testing.assert_allclose(shares.numpy(), expected, atol=1e-6)


def test_crop_views_keep_the_composition_of_the_views_they_return():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 4, (50, 16, 16)).astype(np.uint8)
    spec = EncoderSpec(n_tokens=5, window_size=16, embedding_dim=8)
    draw = CropViews(windows, batch_size=8, min_crop_share=0.5, spec=spec, seed=0, device=torch.device("cpu"))
    v1, v2 = draw()
    assert v1.shape == v2.shape == (8, 16, 16) and draw.composition.moments is None
    torch.testing.assert_close(draw.composition.shares[0], class_shares(torch.cat([v1, v2]), 5))
    # Stacked inputs (B, C, S, S): a categorical source's shares, a continuous source's normalised moments
    # (NaN pixels at the median, as the encoder reads them).
    elevation = rng.normal(1500.0, 200.0, (50, 16, 16))
    elevation[:, :4] = np.nan
    stacked = np.stack([windows, windows % 2, elevation], axis=1).astype(np.float32)
    spec = EncoderSpec(n_tokens=5, window_size=16, embedding_dim=8, stacked_tokens=(3,),
                       continuous_centre=(1500.0,), continuous_scale=(200.0,))
    draw = CropViews(stacked, batch_size=8, min_crop_share=0.5, spec=spec, seed=0, device=torch.device("cpu"))
    v1, v2 = draw()
    views = torch.cat([v1, v2])
    torch.testing.assert_close(draw.composition.shares[0], class_shares(views[:, 0], 5))
    torch.testing.assert_close(draw.composition.shares[1], class_shares(views[:, 1], 3))
    z = np.nan_to_num((views[:, 2].numpy().astype(np.float64) - 1500.0) / 200.0).reshape(16, -1)
    np.testing.assert_allclose(draw.composition.moments.numpy(), np.stack([z.mean(1), z.std(1, ddof=1)], 1),
                               atol=1e-4)
    decoder = CompositionDecoder(spec)
    assert decoder.linear.out_features == 5 + 3 + 2
    assert float(decoder.loss(torch.zeros(16, 8), draw.composition).detach()) > 0


def test_composition_loss_trains_a_vector_that_encodes_the_class_proportions():
    """Windows mixing two classes in every proportion (shuffled pixels, so only the proportion tells them
    apart): with the composition loss, a linear probe on held-out windows reads the proportion back, and the
    training-only decoder does not become part of the model."""
    rng = np.random.default_rng(0)
    windows = np.where(rng.random((300, 16, 16)) < rng.random(300)[:, None, None], 1, 2).astype(np.uint8)
    proportion = (windows == 1).mean(axis=(1, 2))
    model = build_encoder(EncoderSpec(n_tokens=4, window_size=16, embedding_dim=8), seed=0)
    keys = set(model.state_dict())
    result = train_crop_contrastive(model, windows, steps=60, batch_size=32, learning_rate=3e-3, temperature=0.2,
                                    min_crop_share=0.7, seed=0, composition_weight=1.0)
    assert len(result.losses) == 60 and np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    assert set(model.state_dict()) == keys and not model.training
    z = embed(model, windows, torch.device("cpu"), 64, False)
    assert linear_probe_r2(z[:200], proportion[:200], z[200:], proportion[200:]) > 0.9


def test_contrastive_training_lowers_the_loss_and_separates_class_mixes():
    rng = np.random.default_rng(0)
    mix = rng.integers(0, 2, 200)
    windows = np.where(mix[:, None, None] == 0, rng.integers(0, 2, (200, 16, 16)),
                       rng.integers(2, 4, (200, 16, 16))).astype(np.uint8)
    model = build_encoder(EncoderSpec(n_tokens=5, window_size=16, embedding_dim=8), seed=0)
    result = train_crop_contrastive(model, windows, steps=60, batch_size=32, learning_rate=3e-3, temperature=0.2,
                                    min_crop_share=0.7, seed=0)
    assert len(result.losses) == 60 and np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    z = embed(model, windows, torch.device("cpu"), 64, False)
    same = (z[mix == 0] @ z[mix == 0].T).mean()
    across = (z[mix == 0] @ z[mix == 1].T).mean()
    assert same > across + 0.2
