"""The chip classifier on small models we create: frozen backbone, head training with per-epoch metrics
(checked against hand computations), spatially separate validation, save/load, and ONNX equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoembed.core.errors import InputError
from geoembed.imagery.encoders.chipnet import ChipNet, ChipNetSpec
from geoembed.imagery.encoders.clay import (
    CLAY_S2_BANDS, CLAY_SIZES, ClayBackboneSpec, ClayCheckpointError, ClayChipBackbone, ClayEncoder, clay_pixels,
    file_sha256, save_encoder_checkpoint,
)
from geoembed.quadkey.classifier import (
    ChipClassifier, FeatureExtractor, HeadSpec, LabelledSamples, OnnxMismatchError, check_onnx, evaluate,
    export_onnx, load_backbone, load_classifier, pooled_features, save_classifier, split_by_group, train_classifier,
    untrained_like,
)

BANDS = ("B02", "B03", "B04", "B08")


def _backbone(seed=0) -> ChipNet:
    """A small random backbone, normalising the bands as one trained on these samples would."""
    torch.manual_seed(seed)
    net = ChipNet(ChipNetSpec(BANDS, embedding_dim=16, patch_dim=8, patch_size=16, width=8)).eval()
    x = _samples().reflectance
    net.set_normalisation(torch.from_numpy(x.mean(axis=(0, 2, 3))), torch.from_numpy(x.std(axis=(0, 2, 3))))
    return net


def _samples(n=96, seed=0) -> LabelledSamples:
    """Chips whose label says what is in them: 'water' chips are dark in NIR, 'bright' chips bright in red."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.1, 0.02, size=(n, 4, 32, 32)).astype(np.float32)
    water = rng.random(n) < 0.5
    bright = rng.random(n) < 0.5
    x[water, 3] -= 0.08
    x[bright, 2] += 0.1
    return LabelledSamples(x, np.column_stack([water, bright]), np.arange(n) // 8)


def test_only_the_head_trains_and_the_backbone_stays_as_it_was():
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trained = train_classifier(backbone, _samples(), HeadSpec(("water", "bright"), hidden=(32,)), epochs=40,
                               batch_size=16, learning_rate=3e-3)
    after = trained.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and batch-norm statistics
    assert len(trained.epochs) == 40 and trained.best.validation_f2 >= max(e.validation_f2 for e in trained.epochs)
    assert trained.best.validation_f2 > 0.8 and trained.best.validation_f2 > trained.untrained["f2"]
    assert trained.epochs[-1].train_loss < trained.epochs[0].train_loss


def test_unfreezing_the_last_block_trains_it():
    backbone = _backbone()
    model = ChipClassifier(backbone, HeadSpec(("a",), unfreeze_last_block=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.features") for n in trainable)
    assert not any(n.startswith("backbone.features.0.") for n in trainable)  # the stem stays frozen


def test_metrics_match_a_hand_computation():
    model = ChipClassifier(_backbone(), HeadSpec(("a", "b"), hidden=(8,))).eval()
    samples = _samples(40)
    x, y = torch.from_numpy(samples.reflectance), torch.from_numpy(samples.targets.astype(np.float32))
    loss, accuracy, f2 = evaluate(model, x, y)
    with torch.no_grad():
        p = model(x).sigmoid().numpy()
    pred, truth = p >= 0.5, samples.targets
    per_class_acc = (pred == truth).mean(axis=0)
    f2s = []
    for k in range(2):
        tp = (pred[:, k] & truth[:, k]).sum()
        fp = (pred[:, k] & ~truth[:, k]).sum()
        fn = (~pred[:, k] & truth[:, k]).sum()
        f2s.append(5 * tp / (5 * tp + 4 * fn + fp) if tp + fn + fp else 0.0)
    assert accuracy == pytest.approx(per_class_acc.mean(), abs=1e-6)
    assert f2 == pytest.approx(np.mean(f2s), abs=1e-6)
    bce = -(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean()
    assert loss == pytest.approx(bce, rel=1e-4)


def test_validation_holds_out_whole_groups():
    groups = np.repeat(np.arange(10), 5)
    held = split_by_group(groups, 0.2, seed=1)
    assert set(groups[held]).isdisjoint(groups[~held]) and len(set(groups[held])) == 2
    with pytest.raises(InputError, match="at least two are needed"):
        split_by_group(np.zeros(5), 0.2, 0)


def test_save_and_load_give_the_same_outputs():
    model = ChipClassifier(_backbone(), HeadSpec(("a", "b"), hidden=(8,))).eval()
    x = torch.from_numpy(_samples(6).reflectance)
    loaded, extra = load_classifier(save_classifier(model, {"note": "x"}))
    torch.testing.assert_close(loaded(x), model(x))
    assert extra == {"note": "x"} and loaded.head_spec == model.head_spec


def test_onnx_exports_match_torch_at_any_batch_size():
    model = ChipClassifier(_backbone(), HeadSpec(("a", "b", "c"), hidden=(16,))).eval()
    x = _samples(7).reflectance
    classifier_onnx = export_onnx(model, len(BANDS), 32)
    features_onnx = export_onnx(FeatureExtractor(model), len(BANDS), 32)
    assert check_onnx(classifier_onnx, model, x) < 1e-4
    assert check_onnx(features_onnx, FeatureExtractor(model), x[:1]) < 1e-4
    # The file of another model, or of the features, is not the classifier.
    other = ChipClassifier(_backbone(seed=1), HeadSpec(("a", "b", "c"), hidden=(16,))).eval()
    with pytest.raises(OnnxMismatchError, match="differs from the model"):
        check_onnx(export_onnx(other, len(BANDS), 32), model, x)
    with pytest.raises(OnnxMismatchError, match="outputs of shape"):
        check_onnx(features_onnx, model, x)


def test_precision_at_k_of_shared_labels_by_hand():
    from geoembed.quadkey.retrieval import precision_at_k, random_precision

    # Two tight groups far apart: water chips near (1, 0), forest chips near (0, 1); one chip without labels.
    features = np.array([[1, 0.01], [1, 0.02], [1, 0.03], [0.01, 1], [0.02, 1], [0.7, 0.7]], dtype=np.float32)
    labels = [{"water"}, {"water"}, {"water", "wetland"}, {"forest"}, {"forest"}, set()]
    # k = 2: a water chip's neighbours are the two other water chips; a forest chip's, the other forest
    # chip and the unlabelled chip (closer to it than any water chip).
    assert precision_at_k(features, labels, k=2) == pytest.approx((3 * 1 + 2 * 0.5) / 5)
    # k = 3: each water chip's third neighbour is the unlabelled chip; each forest chip's are that one and a water chip.
    assert precision_at_k(features, labels, k=3) == pytest.approx((3 * 2 / 3 + 2 * 1 / 3) / 5)
    # At random, a water chip finds 2 of the 5 others sharing a label, a forest chip 1 of 5.
    assert random_precision(labels) == pytest.approx((3 * 2 / 5 + 2 * 1 / 5) / 5)
    assert np.isnan(precision_at_k(features, [set()] * 6))


# --- Clay as the backbone (a tiny randomly initialised model of Clay's structure) ----------------------------


def _clay_backbone(seed=0) -> ClayChipBackbone:
    torch.manual_seed(seed)
    return ClayChipBackbone.untrained(ClayBackboneSpec("tiny", ("B04", "B08"), BANDS)).eval()


def test_clay_backbone_feeds_clay_as_the_imagery_pipeline_does():
    backbone = _clay_backbone()
    x = _samples(4).reflectance
    x[0, :, :4, :4] = np.nan  # no data: the band mean for Clay
    unknown = torch.zeros(4, 4)
    expected = backbone.encoder(torch.from_numpy(clay_pixels(x[:, [2, 3]], ["B04", "B08"])), unknown, unknown)[0]
    torch.testing.assert_close(backbone.pooled(torch.from_numpy(x)), expected)
    assert pooled_features(backbone, x).shape == (4, CLAY_SIZES["tiny"].dim)
    fresh = untrained_like(backbone, seed=1)
    assert fresh.spec == backbone.spec
    assert not torch.equal(fresh.encoder.transformer.layers[0][0].to_qkv.weight,
                           backbone.encoder.transformer.layers[0][0].to_qkv.weight)
    with pytest.raises(InputError, match=r"Clay reads bands \['B11'\] that the chips do not have"):
        ClayChipBackbone.untrained(ClayBackboneSpec("tiny", ("B11",), BANDS))


def test_a_classifier_on_clay_trains_only_its_head_and_exports_to_onnx():
    backbone = _clay_backbone()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    samples = _samples(48)
    trained = train_classifier(backbone, samples, HeadSpec(("water", "bright"), hidden=(16,)), epochs=2, batch_size=16)
    assert all(torch.equal(before[k], v) for k, v in trained.model.backbone.state_dict().items())
    x = samples.reflectance[:5]
    loaded, _ = load_classifier(save_classifier(trained.model, {}))
    torch.testing.assert_close(loaded(torch.from_numpy(x)), trained.model(torch.from_numpy(x)))
    features = export_onnx(FeatureExtractor(trained.model), len(BANDS), 32)
    assert check_onnx(features, FeatureExtractor(trained.model), x) < 1e-4
    # One file for sub-tiles and whole chips: the patch grid (and Clay's position encoding) follows the input.
    assert check_onnx(features, FeatureExtractor(trained.model), np.resize(x, (2, 4, 64, 64))) < 1e-4
    unfrozen = ChipClassifier(_clay_backbone(), HeadSpec(("a",), unfreeze_last_block=True))
    trainable = {n for n, p in unfrozen.named_parameters() if p.requires_grad}
    last = len(unfrozen.backbone.encoder.transformer.layers) - 1
    assert any(n.startswith(f"backbone.encoder.transformer.layers.{last}.") for n in trainable)
    assert not any(n.startswith(("backbone.encoder.transformer.layers.0.", "backbone.encoder.patch_embedding"))
                   for n in trainable)


def test_the_backbone_pointer_loads_clay_from_its_checkpoint_and_refuses_a_changed_file(tmp_path):
    torch.manual_seed(0)
    encoder = ClayEncoder(CLAY_SIZES["tiny"], [CLAY_S2_BANDS[b][0] for b in ("B04", "B08")])
    path = tmp_path / "clay-tiny.ckpt"
    save_encoder_checkpoint(encoder, path)
    pointer = {"kind": "clay", "checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "size": "tiny",
               "bands": ["B04", "B08"]}
    backbone = load_backbone(pointer, list(BANDS), lambda: pytest.fail("a Clay pointer reads no ChipNet"))
    assert backbone.spec == ClayBackboneSpec("tiny", ("B04", "B08"), BANDS)
    torch.testing.assert_close(backbone.encoder.state_dict(), encoder.state_dict())
    save_encoder_checkpoint(ClayEncoder(CLAY_SIZES["tiny"], [0.665, 0.842]), path)  # other weights, same path
    with pytest.raises(ClayCheckpointError, match="SHA-256 [0-9a-f]{64}, not the configured"):
        load_backbone(pointer, list(BANDS), lambda: b"")
