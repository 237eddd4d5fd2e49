"""int8 quantisation: codes, scales, the documented inverse, and what it costs search."""

import numpy as np
import pytest

from geoembed.core.quantise import INT8_LIMIT, dequantise, dimension_scales, quantise_int8


def _unit(n=500, d=32, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_per_vector_codes_use_the_full_range_and_invert_within_half_a_step():
    v = _unit()
    q = quantise_int8(v, "vector")
    assert q.codes.dtype == np.int8 and q.scale.shape == (len(v),)
    assert (np.abs(q.codes).max(axis=1) == INT8_LIMIT).all()  # the largest component maps to +-127
    back = dequantise(q.codes, q.scale, normalise=False)
    assert (np.abs(back - v) <= q.scale[:, None] / 2 + 1e-7).all()
    assert q.nbytes == v.shape[0] * (v.shape[1] + 4)


def test_per_dimension_scales_are_shared_and_can_be_given():
    v = _unit()
    scales = dimension_scales(v)
    q = quantise_int8(v[:10], "dimension", dimension_scale=scales)
    np.testing.assert_array_equal(q.scale, scales)
    back = dequantise(q.codes, q.scale, per="dimension", normalise=False)
    assert (np.abs(back - v[:10]) <= scales[None, :] / 2 + 1e-7).all()


def test_rows_without_a_vector_stay_without_one():
    v = _unit(5)
    v[2] = np.nan
    q = quantise_int8(v)
    assert np.isnan(q.scale[2]) and (q.codes[2] == 0).all()
    out = dequantise(q.codes, q.scale)
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()
    np.testing.assert_allclose(np.linalg.norm(np.delete(out, 2, axis=0), axis=1), 1.0, rtol=1e-6)


def test_nearest_neighbours_survive_quantisation():
    v = _unit(2000, 64)
    back = dequantise(*(lambda q: (q.codes, q.scale))(quantise_int8(v)))
    exact = np.argsort(-(v[:50] @ v.T), axis=1)[:, 1:11]
    found = np.argsort(-(back[:50] @ back.T), axis=1)[:, 1:11]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
    assert recall > 0.9


def test_an_unknown_scale_kind_is_named():
    with pytest.raises(ValueError, match="per must be"):
        quantise_int8(_unit(3), "row")
