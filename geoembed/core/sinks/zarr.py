"""Zarr stores, local or on an object store: opening and atomic replacement of stores one writer
writes whole. Every pipeline writes its Zarr outputs through these; a store many writers share is a
transactional repository (``geoembed.core.sinks.repository``).

A store is a local path or an fsspec URL (s3://bucket/prefix/x.zarr; credentials and endpoint from the
environment, e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL). Local writes swap directories atomically; an
object store has no rename, so there a store is written in place.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec
import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore

def h3_coordinate(cells: np.ndarray, resolution: int) -> tuple:
    # xdggs rejects any other attribute on this coordinate.
    return ("cells", np.asarray(cells, dtype=np.uint64), {"grid_name": "h3", "level": int(resolution)})


StorePath = str | os.PathLike[str]  # a local path, or a URL (str or universal_pathlib's UPath)


def is_remote(path: StorePath) -> bool:
    return "://" in str(path)


def storage_options(url: StorePath) -> dict:
    """fsspec options for a URL. The S3 endpoint is passed explicitly (not only left to botocore's
    environment lookup) because fsspec caches filesystems by their options: a process that changes
    AWS_ENDPOINT_URL must get a new one."""
    options = dict(getattr(url, "storage_options", {}) or {})
    if str(url).startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        options.setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
    return options


def _fs(url: StorePath) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(str(url), **storage_options(url))


def zarr_target(path: "StorePath | Store") -> "Path | Store":
    """What xarray/zarr open: the local path; for a URL the latest snapshot of a transactional store
    (see ``staged_store``), or else an fsspec store; a store object as it is."""
    if isinstance(path, Store):
        return path
    if is_remote(path):
        from geoembed.core.sinks.repository import is_repository, snapshot_store

        if is_repository(path):
            return snapshot_store(path)[0]
        return FsspecStore.from_url(str(path), storage_options=storage_options(path))
    return Path(path)


def plain_store_exists(path: StorePath) -> bool:
    """A plain Zarr v3 store is there (its root ``zarr.json``), not a transactional repository."""
    if is_remote(path):
        fs, root = _fs(path)
        return fs.exists(f"{root.rstrip('/')}/zarr.json")
    return (Path(path) / "zarr.json").exists()


def store_exists(path: StorePath) -> bool:
    """A store is there: plain Zarr, or a transactional repository."""
    from geoembed.core.sinks.repository import is_repository

    return plain_store_exists(path) or is_repository(path)


def replace_directory(tmp: StorePath, final: StorePath) -> None:
    """Swap a freshly written directory into place; the old one is kept until the new one is there.
    (Object stores have no rename: the new objects are copied over the old ones, then the leftovers
    deleted; a reader in between may see a mix, which only a stencil change causes.)"""
    if is_remote(final):
        fs, final_key = _fs(final)
        _, tmp_key = _fs(tmp)
        new = fs.find(tmp_key)  # objects only (no pseudo-directories)
        targets = [final_key + key[len(tmp_key):] for key in new]
        stale = sorted(set(fs.find(final_key)) - set(targets))
        if new:
            fs.copy(new, targets)  # new objects over the old ones first,
        if stale:
            fs.rm(stale)  # then the old objects the new store does not have,
        if new:
            fs.rm(new)  # then the temporary copy.
        return
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def sibling(path: StorePath, name: str) -> StorePath:
    if is_remote(path):
        return f"{str(path).rstrip('/').rsplit('/', 1)[0]}/{name}"
    return Path(path).with_name(name)


def store_name(path: StorePath) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


@contextmanager
def staged_store(path: StorePath) -> "Iterator[StorePath | Store]":
    """Where to write a store that readers must see whole or not at all: locally a temporary sibling,
    swapped into place when the block ends without an error (and removed if it fails); on an object
    store, which has no rename, a session of a transactional store there, committed as one snapshot
    when the block ends without an error (nothing of a failed or killed write is ever seen)."""
    if is_remote(path):
        from geoembed.core.sinks.repository import replacing_session

        with replacing_session(path) as store:
            yield store
        return
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, final)


def consolidate(target: StorePath) -> None:
    """Write the store's consolidated metadata (one read opens it; on S3 one request instead of one per
    array). Zarr v3 has it as an extension zarr-python warns about; every client we know reads it. A
    transactional store needs none (a snapshot is opened in one read)."""
    if isinstance(target, Store):
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        zarr.consolidate_metadata(zarr_target(target))


def write_dataset(path: StorePath, ds: xr.Dataset, encoding: dict | None = None) -> None:
    """Write a whole dataset as a Zarr v3 store with consolidated metadata; locally a re-write replaces
    the previous store only once the new one is complete (readers see the old store or the new one)."""
    with staged_store(path) as target:
        ds.to_zarr(zarr_target(target), mode="w", zarr_format=3, consolidated=False, encoding=encoding)
        consolidate(target)


def open_store(path: StorePath, what: str, chunks: dict | str | None = None) -> xr.Dataset:
    """A store, lazily indexed without dask unless ``chunks`` is given (``{}``: the store's chunks).
    A missing store is named, with what it is (``what``)."""
    if not store_exists(path):
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; materialize it first")
    return xr.open_zarr(zarr_target(path), consolidated=False, chunks=chunks)
