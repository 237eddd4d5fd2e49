"""Lineage: content versions of sources and models, and their per-row encoding in stores.

A version is the first 16 hex digits of a sha256: of a file's bytes (or an object store's ETag), of a
set of file versions, or of a model's architecture and weights. Stores keep it per row as the uint64
it spells (0 = none): fixed-width UTF-32 has no Zarr v3 spec, and variable-length strings read ~40x
slower.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Mapping

import numpy as np

VERSION_DTYPE = "u8"
VERSION_ENCODING = "uint64 whose 16-digit lower-case hex form is the version; 0 = none"


def encode_version(version: str) -> int:
    if len(version) != 16:
        raise ValueError(f"version {version!r} is not a 16-hex-digit content hash")
    try:
        return int(version, 16)
    except ValueError:
        raise ValueError(f"version {version!r} is not a 16-hex-digit content hash") from None


def decode_version(value: int) -> str:
    return f"{int(value):016x}" if int(value) else ""


def content_version(location: str) -> str:
    """A fingerprint of a file's bytes: sha256 of a local file, else the object store's ETag/size."""
    if "://" not in location and not location.startswith("/vsi"):
        digest = hashlib.sha256()
        with open(location, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()[:16]
    import fsspec  # remote: ask the store instead of downloading the whole object

    fs, path = fsspec.core.url_to_fs(location)
    info = fs.info(path)
    token = str(info.get("ETag") or info.get("etag") or info.get("checksum") or "") + f":{info.get('size')}"
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def combined_version(versions: Iterable[str]) -> str:
    """One version for a set of versions (a single one keeps its own)."""
    versions = list(versions)
    if len(versions) == 1:
        return versions[0]
    return hashlib.sha256("\n".join(sorted(versions)).encode()).hexdigest()[:16]


def named_versions_version(named: Mapping[str, str]) -> str:
    """The version of a whole source made of named parts ({name: content version}); one part keeps its own."""
    if len(named) == 1:
        return next(iter(named.values()))
    text = "\n".join(f"{name}\t{version}" for name, version in sorted(named.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_version(architecture: Mapping | str, state_dict: Mapping) -> str:
    """Content hash of a model: its architecture description and every weight tensor, by name."""
    text = architecture if isinstance(architecture, str) else json.dumps(architecture, sort_keys=True)
    digest = hashlib.sha256(text.encode())
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()[:16]
