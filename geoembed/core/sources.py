"""The source rasters of a product: one raster, or every raster file in a landing location.

A landing location (a local directory, or an ``s3://`` prefix) holds raster files that land over time.
Together they form a mosaic: where files overlap, the most recently landed one wins. A file is
identified by its name in the location and fingerprinted cheaply (size, modification time, ETag);
its content version (sha256 of the bytes, or the object store's ETag) is computed only when the
fingerprint changes. The landing sensor keeps ``{name: [fingerprint, version]}`` as its cursor.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from geoembed.core.errors import InputError
from geoembed.core.lineage import content_version, named_versions_version


class LandingLocationError(InputError):
    """A landing location cannot be listed."""


@dataclass(frozen=True)
class SourceFile:
    """One raster file of a product's source."""

    name: str  # the file's name within its location (relative path or object key suffix)
    location: str  # what rasterio opens: a path, or a URI / GDAL /vsi path
    size: int
    modified_ns: int  # modification time (local mtime, or the object's LastModified)
    etag: str = ""  # object stores: their content tag
    version: str = ""  # 16-hex content version, filled in by ``with_versions``

    @property
    def fingerprint(self) -> str:
        return f"{self.size}:{self.modified_ns}:{self.etag}"


class Listing(list):
    """Files of a location (a list of SourceFile) and the entries that could not be examined or read,
    with why: one bad entry never stops the others, and is reported."""

    def __init__(self, files=(), rejected: dict[str, str] | None = None):
        super().__init__(files)
        self.rejected: dict[str, str] = dict(rejected or {})


def _why(exc: OSError) -> str:
    return f"cannot be examined: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


def list_local(directory: str | os.PathLike[str], pattern: str, recursive: bool = False) -> Listing:
    """The files whose names match ``pattern`` in ``directory`` (one ``scandir``: cheap at 10,000 files),
    or anywhere below it (``recursive``; names are then paths relative to it). Names starting with a dot
    (partial copies, temporary files, hidden folders) are skipped. Entries that cannot be examined (a
    symbolic link loop or to nothing, a file that vanishes while listed) are listed as rejected."""
    root = Path(directory)
    if not root.is_dir():
        raise LandingLocationError(f"landing location {str(root)!r} is not a directory (or does not exist)")
    listing = Listing()
    folders = [root]
    while folders:
        folder = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                name = Path(entry.path).relative_to(root).as_posix()
                try:
                    if recursive and entry.is_dir():
                        folders.append(Path(entry.path))
                        continue
                    if not fnmatch.fnmatch(entry.name, pattern):
                        continue
                    if not entry.is_file():
                        if entry.is_symlink():
                            listing.rejected[name] = "a symbolic link to nothing"
                        continue
                    stat = entry.stat()
                except OSError as exc:
                    listing.rejected[name] = _why(exc)
                    continue
                listing.append(SourceFile(name, str(Path(entry.path)), stat.st_size, stat.st_mtime_ns))
    listing.sort(key=lambda f: f.name)
    return listing


def file_version(source: SourceFile) -> str:
    """Content version of one file: sha256 of a local file's bytes, or a hash of an object's ETag and size."""
    if source.etag:
        return hashlib.sha256(f"{source.etag}:{source.size}".encode()).hexdigest()[:16]
    return content_version(source.location)


def with_versions(files: Iterable[SourceFile], known: dict[str, tuple[str, str]]) -> Listing:
    """Fill in each file's content version, reusing ``known[name] = (fingerprint, version)`` when the
    fingerprint is unchanged, so only new or touched files are read. Files that cannot be read (gone,
    unreadable) are left out and listed as rejected, beside the listing's own rejected entries."""
    out = Listing(rejected=getattr(files, "rejected", {}))
    for f in files:
        previous = known.get(f.name)
        try:
            version = previous[1] if previous and previous[0] == f.fingerprint else file_version(f)
        except OSError as exc:
            out.rejected[f.name] = _why(exc)
            continue
        out.append(replace(f, version=version))
    return out


def newest_first(files: Iterable[SourceFile]) -> Listing:
    """Mosaic order: the most recently landed file first (ties broken by name, later names first)."""
    return Listing(sorted(files, key=lambda f: (f.modified_ns, f.name), reverse=True),
                   rejected=getattr(files, "rejected", {}))


def manifest_version(files: Iterable[SourceFile]) -> str:
    """The data version of a whole source: its file names and content versions."""
    return named_versions_version({f.name: f.version for f in files})


@dataclass
class LandingChanges:
    """What changed in a landing location since the cursor."""

    added: list[SourceFile] = field(default_factory=list)
    changed: list[SourceFile] = field(default_factory=list)  # new content under a known name
    touched: list[SourceFile] = field(default_factory=list)  # new fingerprint, same content: no refresh
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    pending: list[SourceFile] = field(default_factory=list)  # not versioned yet (time budget): next tick
    rejected: dict[str, str] = field(default_factory=dict)  # entries that cannot be examined or read

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def diff_landing(
    known: dict[str, tuple[str, str]],
    current: list[SourceFile],
    deadline: float | None = None,
) -> LandingChanges:
    """Compare a listing with the cursor. Files whose fingerprint changed are versioned (read) to tell
    a content change from a mere touch, until ``deadline`` (``time.monotonic()``); the rest are pending."""
    changes = LandingChanges(rejected=dict(getattr(current, "rejected", {})))
    names = set(changes.rejected)  # an entry that cannot be examined now is not removed
    for f in current:
        names.add(f.name)
        previous = known.get(f.name)
        if previous and previous[0] == f.fingerprint:
            changes.unchanged += 1
            continue
        if deadline is not None and time.monotonic() > deadline:
            changes.pending.append(f)
            continue
        try:
            versioned = replace(f, version=file_version(f))
        except OSError as exc:
            changes.rejected[f.name] = _why(exc)
            continue
        if previous is None:
            changes.added.append(versioned)
        elif previous[1] == versioned.version:
            changes.touched.append(versioned)
        else:
            changes.changed.append(versioned)
    changes.removed = sorted(set(known) - names)
    return changes


def advance_cursor(known: dict[str, tuple[str, str]], changes: LandingChanges) -> dict[str, tuple[str, str]]:
    """The cursor after ``changes`` were handled (pending files stay as they were)."""
    out = {k: v for k, v in known.items() if k not in set(changes.removed)}
    for f in [*changes.added, *changes.changed, *changes.touched]:
        out[f.name] = (f.fingerprint, f.version)
    return out


def encode_cursor(known: dict[str, tuple[str, str]], extra: dict | None = None) -> str:
    """A compact cursor string (zlib + base64 JSON): ~25 bytes per file."""
    payload = json.dumps({"files": {k: list(v) for k, v in known.items()}, **(extra or {})}, separators=(",", ":"))
    return base64.b64encode(zlib.compress(payload.encode(), 6)).decode()


def decode_cursor(cursor: str | None) -> tuple[dict[str, tuple[str, str]], dict]:
    if not cursor:
        return {}, {}
    payload = json.loads(zlib.decompress(base64.b64decode(cursor)))
    files = {k: (v[0], v[1]) for k, v in payload.pop("files", {}).items()}
    return files, payload


def split_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'prefix/') of an s3://bucket/prefix URI."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise LandingLocationError(f"landing location {uri!r} is not an s3://bucket[/prefix] URI")
    bucket, _, prefix = uri[5:].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def list_s3(client, uri: str, pattern: str, recursive: bool = False) -> list[SourceFile]:
    """The objects matching ``pattern`` directly under an s3:// prefix, or anywhere below it
    (``recursive``) (``client``: a boto3 S3 client)."""
    bucket, prefix = split_s3_uri(uri)
    files = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **({} if recursive else {"Delimiter": "/"})):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix):]
            base = name.rsplit("/", 1)[-1]
            if not base or any(part.startswith(".") for part in name.split("/")) or not fnmatch.fnmatch(base, pattern):
                continue
            modified = int(obj["LastModified"].timestamp() * 1_000_000_000)
            files.append(SourceFile(name, f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), modified,
                                    etag=str(obj.get("ETag", "")).strip('"') or "-"))
    return Listing(sorted(files, key=lambda f: f.name))


def contiguous_batches(ordered: list[str], wanted: set[str], max_size: int) -> list[list[str]]:
    """``wanted`` keys split into runs of consecutive keys of ``ordered`` (at most ``max_size`` each):
    each batch is one partition range."""
    batches: list[list[str]] = []
    current: list[str] = []
    for key in ordered:
        if key in wanted and len(current) < max_size:
            current.append(key)
            continue
        if current:
            batches.append(current)
        current = [key] if key in wanted else []
    if current:
        batches.append(current)
    return batches
