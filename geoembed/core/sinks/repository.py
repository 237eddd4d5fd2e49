"""Transactional Zarr stores (icechunk) for stores that many writers update at once, on any machine.

A store that several partitions write into (the H3 product) is an icechunk repository. Each write is a
session committed as one snapshot: readers always see a whole snapshot, never a partition half old and
half new; a writer killed before its commit leaves nothing behind (its chunks are unreferenced); and two
writers that raced are told so at commit (``ConflictError``), the loser redoing its write on the
winner's snapshot. On S3 the commit is a conditional write of the branch reference, so this holds
between pods without any lock of ours (a file lock in a pod's ``/tmp`` protected nothing). A local disk
has no conditional writes (icechunk says so), so there, and only there, the commit itself (not the
write) is serialised by a lock file in the repository's folder, which every process on the machine sees.

Local paths use icechunk's filesystem storage; ``s3://`` URLs its S3 storage with credentials, region
and endpoint from the environment (``AWS_*``), like every other S3 client here. Users read a snapshot
with ``xr.open_zarr(repo.readonly_session("main").store, consolidated=False)``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urlparse

import icechunk
import tenacity
from filelock import FileLock
from zarr.abc.store import Store

from geoembed.core.sinks.zarr import StorePath, is_remote

BRANCH = "main"

# The local-disk warning icechunk logs on every open is the case the commit lock below handles.
icechunk.set_logs_filter("warn,icechunk::storage::object_store=error")

# Writers racing on one store: each lost race costs one redo of a region write (milliseconds to a
# second), so many tries with short randomised waits; a store that stays contended this long is a bug.
COMMIT_TRIES = 40


class StoreConflictError(RuntimeError):
    """A transactional write kept losing races with other writers."""


def repository_storage(path: StorePath) -> icechunk.Storage:
    """Icechunk storage for a local path or an ``s3://bucket/prefix`` URL."""
    if not is_remote(path):
        return icechunk.local_filesystem_storage(os.fspath(path))
    url = urlparse(str(path))
    if url.scheme != "s3":
        raise ValueError(f"store {str(path)!r}: transactional stores live on a local disk or s3://, not {url.scheme}://")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return icechunk.s3_storage(
        bucket=url.netloc, prefix=url.path.strip("/"), from_env=True, endpoint_url=endpoint,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        # An S3-compatible server (MinIO, moto, Ceph) is addressed by path and often over plain HTTP.
        allow_http=bool(endpoint and endpoint.startswith("http://")), force_path_style=bool(endpoint),
    )


def is_repository(path: StorePath) -> bool:
    if not is_remote(path) and not os.path.isdir(path):  # (icechunk's check would create the folder)
        return False
    return icechunk.Repository.exists(repository_storage(path))


# A commit rewrites the manifest pieces holding the chunks it changed: split along the first axis (a
# product's rows) so that a region's commit rewrites one piece, not references to every chunk written
# so far (without it the manifests a product's commits write grow with the square of its regions).
MANIFEST_SPLIT_CHUNKS = 256


def repository_config() -> icechunk.RepositoryConfig:
    config = icechunk.RepositoryConfig.default()
    config.manifest = icechunk.ManifestConfig(splitting=icechunk.ManifestSplittingConfig.from_dict(
        {icechunk.ManifestSplitCondition.AnyArray(): {icechunk.ManifestSplitDimCondition.Axis(0): MANIFEST_SPLIT_CHUNKS}}))
    return config


def open_repository(path: StorePath, create: bool = False) -> icechunk.Repository:
    storage = repository_storage(path)
    if create:
        return icechunk.Repository.open_or_create(storage, config=repository_config())
    return icechunk.Repository.open(storage)


@dataclass(frozen=True)
class Commit:
    """What a transactional write left: the snapshot readers now see, and whether anything changed."""

    snapshot: str
    changed: bool
    attempts: int


def transact(path: StorePath, write: Callable[[Store], bool | None], message: str, create: bool = False) -> Commit:
    """Run ``write`` on a writable session of the store's main branch and commit it as one snapshot;
    when another writer committed first, discard and redo ``write`` on the new snapshot (so ``write``
    must decide from what the store holds, not from what it held before). ``write`` returning False
    means nothing to change (no commit)."""
    repo = open_repository(path, create=create)
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(icechunk.ConflictError), stop=tenacity.stop_after_attempt(COMMIT_TRIES),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0), reraise=False)
    try:
        for attempt in retrying:
            with attempt:
                session = repo.writable_session(BRANCH)
                wanted = write(session.store)
                if wanted is False or not session.has_uncommitted_changes:
                    return Commit(session.snapshot_id, False, attempt.retry_state.attempt_number)
                with _commit_lock(path):
                    snapshot = session.commit(message)
                return Commit(snapshot, True, attempt.retry_state.attempt_number)
    except tenacity.RetryError:
        raise StoreConflictError(f"store {str(path)!r}: {message}: still conflicting with other writers after "
                                 f"{COMMIT_TRIES} tries") from None
    raise AssertionError("unreachable")


@contextmanager
def _commit_lock(path: StorePath) -> Iterator[None]:
    if is_remote(path):  # the object store's conditional write decides
        yield
        return
    with FileLock(os.path.join(os.fspath(path), ".commit.lock")):  # inside: it moves with the repository
        yield


@contextmanager
def replacing_session(path: StorePath) -> Iterator[Store]:
    """A writable session of a store that one writer replaces whole (a partition's store): what the
    block writes is committed as one snapshot when it ends without an error, else discarded."""
    repo = open_repository(path, create=True)
    session = repo.writable_session(BRANCH)
    yield session.store
    if not session.has_uncommitted_changes:
        return
    try:
        with _commit_lock(path):
            session.commit("store written whole")
    except icechunk.ConflictError:
        raise StoreConflictError(f"store {str(path)!r} was written by another run meanwhile: run this partition "
                                 "again") from None


def snapshot_store(path: StorePath, snapshot: str | None = None) -> tuple[Store, str]:
    """A read-only store of one snapshot (default: the latest on the main branch), and its id."""
    repo = open_repository(path)
    session = repo.readonly_session(snapshot_id=snapshot) if snapshot else repo.readonly_session(branch=BRANCH)
    return session.store, session.snapshot_id
