"""Chip encoders: Clay v1.5 reimplemented (checked against Clay's own outputs), its checkpoints, our
ChipNet and its training, batched inference with metadata."""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from geoembed.core.inference import batched_inference
from geoembed.imagery.encoders import ChipInputs, chipnet_encoder, clay_encoder, load_chipnet, save_chipnet
from geoembed.imagery.encoders.chipnet import ChipNet, ChipNetSpec
from geoembed.imagery.encoders.clay import (
    CLAY_S2_BANDS, CLAY_SIZES, ClayCheckpointError, ClayEncoder, ClaySpec, clay_latlon, clay_pixels, clay_time,
    file_sha256, save_encoder_checkpoint,
)
from geoembed.imagery.training import CropTriplets, TrainingChips, held_out_blocks, train_chip_encoder

FIXTURES = Path(__file__).parent / "fixtures"
TINY = ClaySpec(64, 2, 4, 16, 2.0)


def _deterministic_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weight recipe the reference outputs were made with (fixtures/README.md)."""
    weights = {}
    for name, tensor in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        scale = torch.randn(tensor.shape, generator=g)
        weights[name] = 1.0 + 0.1 * scale if name.endswith(".weight") and tensor.dim() == 1 else 0.1 * scale
    return weights


def test_clay_encoder_matches_clays_own_outputs():
    golden = np.load(FIXTURES / "clay_golden.npz")
    model = ClayEncoder(TINY, [0.49, 0.56, 0.665, 0.842]).eval()
    state = model.state_dict()
    assert list(state) == list(golden["keys"])  # same names, same order
    assert ["x".join(map(str, t.shape)) for t in state.values()] == list(golden["shapes"])
    model.load_state_dict(_deterministic_weights(model), strict=True)
    g = torch.Generator().manual_seed(1234)
    pixels, time, latlon = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    with torch.no_grad():
        tokens = model.tokens(pixels, time, latlon)
        cls, patches = model(pixels, time, latlon)
    np.testing.assert_allclose(tokens.numpy(), golden["output"], atol=1e-5)
    assert cls.shape == (2, 64) and patches.shape == (2, 16, 64)


def test_clay_v15_architecture_has_clays_keys_and_311m_parameters():
    expected = [line.split("\t") for line in (FIXTURES / "clay_large_keys.txt").read_text().splitlines()]
    model = ClayEncoder(CLAY_SIZES["large"], [CLAY_S2_BANDS[b][0] for b in CLAY_S2_BANDS])
    state = model.state_dict()
    assert [(k, "x".join(map(str, v.shape))) for k, v in state.items()] == [tuple(e) for e in expected]
    assert sum(p.numel() for p in model.parameters()) == 311_442_944


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A small randomly initialised model of Clay's structure in a Lightning checkpoint's key layout, with
    decoder and teacher keys as a real checkpoint has them."""
    torch.manual_seed(0)
    model = ClayEncoder(CLAY_SIZES["tiny"], [CLAY_S2_BANDS[b][0] for b in CLAY_S2_BANDS])
    path = tmp_path / "clay-tiny.ckpt"
    save_encoder_checkpoint(model, path, extra={"epoch": 3})
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].update({"model.decoder.mask_patch": torch.zeros(96), "model.teacher.x": torch.zeros(2)})
    torch.save(payload, path)
    return path


def test_clay_checkpoint_loads_from_a_local_path_with_its_checksum(tiny_checkpoint):
    loaded = clay_encoder(str(tiny_checkpoint), "tiny", None, file_sha256(tiny_checkpoint), keep_patches=True)
    assert loaded.kind == "clay" and loaded.embedding_dim == 192 and loaded.bands == list(CLAY_S2_BANDS)
    assert loaded.description["checkpoint_sha256"] == file_sha256(tiny_checkpoint) and len(loaded.version) == 16
    again = clay_encoder(str(tiny_checkpoint), "tiny", None, None, keep_patches=True)
    assert again.version == loaded.version  # the version is the weights', not the file's path


def test_clay_checkpoint_problems_are_named(tiny_checkpoint, tmp_path):
    with pytest.raises(ClayCheckpointError, match=r"SHA-256 [0-9a-f]{64}, not the configured 0{64}"):
        clay_encoder(str(tiny_checkpoint), "tiny", None, "0" * 64, False)
    with pytest.raises(ClayCheckpointError, match=r"does not fit the small encoder: 67 keys of another shape \(e.g. "
                                                  r"cls_token: \(1, 1, 192\) in the file, \(1, 1, 384\)"):
        clay_encoder(str(tiny_checkpoint), "small", None, None, False)
    with pytest.raises(ClayCheckpointError, match="does not fit the base encoder: 60 missing keys"):
        clay_encoder(str(tiny_checkpoint), "base", None, None, False)
    payload = torch.load(tiny_checkpoint, weights_only=True)
    del payload["state_dict"]["model.encoder.cls_token"]
    payload["state_dict"]["model.encoder.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.ckpt"
    torch.save(payload, broken)
    with pytest.raises(ClayCheckpointError, match=r"1 missing keys \(e.g. \['cls_token'\]\); 1 unexpected keys"):
        clay_encoder(str(broken), "tiny", None, None, False)
    with pytest.raises(ClayCheckpointError, match="does not exist .*never downloaded"):
        clay_encoder(str(tmp_path / "nope.ckpt"), "tiny", None, None, False)
    pickled = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": payload["state_dict"], "hyper_parameters": SimpleNamespace(size="tiny")}, pickled)
    with pytest.raises(ClayCheckpointError, match="cannot be loaded safely; set the encoder's sha256"):
        clay_encoder(str(pickled), "tiny", None, None, False)


def test_clay_inputs_follow_clays_conventions():
    from datetime import datetime, timezone

    time = clay_time(datetime(2017, 2, 16, 10, 21, tzinfo=timezone.utc))
    week = 7 * 2 * np.pi / 52
    np.testing.assert_allclose(time, [np.sin(week), np.cos(week), np.sin(10 * 2 * np.pi / 24), np.cos(10 * 2 * np.pi / 24)],
                               atol=1e-6)
    np.testing.assert_allclose(clay_latlon(np.array([52.5]), np.array([13.4]))[0],
                               [np.sin(np.radians(52.5)), np.cos(np.radians(52.5)), np.sin(np.radians(13.4)),
                                np.cos(np.radians(13.4))], atol=1e-6)
    pixels = clay_pixels(np.full((1, 2, 4, 4), 0.1105, np.float32), ["B02", "B03"])
    np.testing.assert_allclose(pixels[0, 0], 0.0, atol=1e-4)  # B02's mean DN is 1105
    nan = clay_pixels(np.full((1, 1, 2, 2), np.nan, np.float32), ["B02"])
    assert (nan == 0).all()


def test_batched_inference_passes_metadata_and_covers_the_last_partial_batch(tiny_checkpoint):
    loaded = clay_encoder(str(tiny_checkpoint), "tiny", ["B02", "B03", "B04"], None, True)
    reflectance = np.random.default_rng(0).random((5, 3, 16, 16)).astype(np.float32) * 0.3
    inputs = ChipInputs(lambda rows: reflectance[rows], np.arange(5), loaded, np.zeros((5, 4), np.float32),
                        clay_latlon(np.full(5, 52.0), np.full(5, 13.0)))
    cls, patches = batched_inference(loaded.model, inputs, torch.device("cpu"), batch_size=2, bf16=False)
    assert cls.shape == (5, 192) and patches.shape == (5, 4, 192) and not np.isnan(cls).any()
    one, _ = batched_inference(loaded.model, inputs, torch.device("cpu"), batch_size=5, bf16=False)
    np.testing.assert_allclose(cls, one, atol=1e-5)


def test_chipnet_embeds_any_chip_size_to_unit_vectors_and_round_trips():
    spec = ChipNetSpec(("B02", "B03", "B04"), embedding_dim=32, patch_dim=8, patch_size=16, width=8)
    model = ChipNet(spec).eval()
    x = torch.rand(2, 3, 64, 64)
    x[0, :, :10] = float("nan")  # no data
    cls, patches = model(x)
    assert cls.shape == (2, 32) and patches.shape == (2, 16, 8) and not torch.isnan(cls).any()
    torch.testing.assert_close(cls.norm(dim=1), torch.ones(2))
    restored, extra = load_chipnet(save_chipnet(model, {"metrics": {"a": 1}}))
    torch.testing.assert_close(restored(x)[0], cls)
    assert extra["metrics"] == {"a": 1} and chipnet_encoder(restored, "v").bands == ["B02", "B03", "B04"]


def test_chipnet_training_beats_the_untrained_network_on_held_out_chips():
    """Synthetic chips with a texture per location: crops of one chip are alike, other chips differ."""
    rng = np.random.default_rng(0)
    n, size = 16, 64
    base = rng.random((n, 3, 1, 1)).astype(np.float32)
    stripes = np.sin(np.arange(size)[None, None, :, None] * rng.uniform(0.1, 1.5, (n, 1, 1, 1))).astype(np.float32)
    reflectance = 0.1 + 0.2 * base + 0.05 * stripes * np.ones((n, 3, size, size), np.float32)
    chips = TrainingChips(reflectance, np.zeros(n, int), np.repeat(np.arange(4) * 2, 4), np.tile(np.arange(4) * 2, 4))
    held = held_out_blocks(chips, 0.25, seed=0)
    assert 0 < held.sum() < n
    params = SimpleNamespace(steps=40, batch_size=16, crop_size=32, learning_rate=3e-3, margin=0.5,
                             max_train_chips=64, held_out_fraction=0.25, seed=0)
    trained = train_chip_encoder(ChipNetSpec(("B02", "B03", "B04"), 16, 8, 16, 8), chips, params)
    assert trained.quality["trained"] > trained.quality["untrained"] and trained.beats_untrained
    assert len(trained.losses) == 40 and len(trained.version) == 16


def test_crop_triplets_negatives_are_distant():
    chips = TrainingChips(np.zeros((9, 1, 32, 32), np.float32), np.zeros(9, int), np.repeat(np.arange(3), 3),
                          np.tile(np.arange(3), 3))
    sampler = CropTriplets(chips, np.arange(9), crop=16, seed=0)
    for _ in range(20):
        i = int(sampler.rng.integers(0, 9))
        j = sampler._distant(i)
        assert max(abs(chips.row[i] - chips.row[j]), abs(chips.col[i] - chips.col[j])) >= 2 or i == 4
