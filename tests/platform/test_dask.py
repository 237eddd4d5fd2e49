"""Chunk-parallel work on a Dask cluster: the PCA behind the embedding map, on a real local cluster."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from distributed import LocalCluster
from sklearn.decomposition import PCA

from geoembed.core.evaluation import principal_rgb, principal_scores
from geoembed_resources import DaskCluster


def _embeddings(n: int = 24_000, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors with structure (a few dominant directions), like real embeddings."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) @ rng.normal(size=(4, dim)) * 3 + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_in_memory_scores_match_scikit_learn():
    x = _embeddings(2_000)
    ours = principal_scores(x, 3)
    reference = PCA(n_components=3, random_state=0).fit_transform(x.astype(np.float64))
    # same components up to sign; scikit-learn's sign rule: largest loading positive
    signs = np.sign(np.sum(ours * reference, axis=0))
    np.testing.assert_allclose(ours, reference * signs, atol=1e-6)


def test_local_cluster_computes_the_same_pca_chunk_parallel():
    x = _embeddings()
    chunked = da.from_array(x, chunks=(2_000, x.shape[1]))  # 12 chunks, as a Zarr store's rows
    with DaskCluster(n_workers=2, threads_per_worker=1, processes=True).client() as client:
        assert len(client.scheduler_info()["workers"]) == 2
        from distributed import get_task_stream

        with get_task_stream(client) as stream:
            colours = principal_rgb(chunked)
        workers = {task["worker"] for task in stream.data}
    np.testing.assert_allclose(colours, principal_rgb(x), atol=1e-5)
    assert len(workers) == 2  # both worker processes did part of the work
    assert len(stream.data) >= 12


def test_resource_joins_an_existing_cluster_and_leaves_it_running():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        resource = DaskCluster(scheduler_address=cluster.scheduler_address)
        with resource.client() as client:
            assert client.scheduler.address == cluster.scheduler_address
            assert float(da.ones((1000,), chunks=100).sum().compute()) == 1000.0
        with resource.client() as again:  # still there
            assert len(again.scheduler_info()["workers"]) == 1


def test_unreachable_scheduler_is_named():
    resource = DaskCluster(scheduler_address="tcp://127.0.0.1:9", connect_timeout_seconds=2)
    with pytest.raises(OSError, match="127.0.0.1:9"):
        with resource.client():
            pass
