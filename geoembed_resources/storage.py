"""Where a product's outputs live: ``<root>/<product>/``, a folder that git ignores by default."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import xarray as xr
from pydantic import Field

from geoembed import stores
from geoembed.grid import ProductLayout


class ProductStorage(dg.ConfigurableResource):
    """Local output storage for products (samples, models, the embedding Zarr store, pictures)."""

    root: str = Field(default="data", description="Folder holding one sub-folder per product.")

    def product_dir(self, product: str) -> Path:
        path = Path(self.root).expanduser().resolve() / product
        path.mkdir(parents=True, exist_ok=True)
        return path

    def samples_path(self, product: str, region_key: str) -> Path:
        return self.product_dir(product) / "samples" / f"{region_key}.zarr"

    def embeddings_path(self, product: str) -> Path:
        return self.product_dir(product) / "embeddings.zarr"

    def model_dir(self, product: str, version: str) -> Path:
        path = self.product_dir(product) / "models" / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    def picture_path(self, product: str, name: str) -> Path:
        path = self.product_dir(product) / "pictures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_json(self, path: Path, payload: dict) -> None:
        """Write JSON atomically (a reader never sees half a file)."""
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def read_json(self, path: Path, what: str) -> dict:
        if not path.exists():
            raise FileNotFoundError(f"{what} ({path}) does not exist yet; materialize it first")
        return json.loads(path.read_text())

    def write_bytes(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def stencil_path(self, product: str) -> Path:
        return self.product_dir(product) / "stencil.json"

    def known_source_versions(self, product: str) -> dict[str, tuple[str, str]]:
        """{source file: (fingerprint, content version)} as the last stencil saw them (empty before one)."""
        path = self.stencil_path(product)
        if not path.exists():
            return {}
        files = self.read_json(path, "the stencil").get("sources", {})
        return {n: (f["fingerprint"], f["version"]) for n, f in files.items()}

    def current_model_path(self, product: str) -> Path:
        return self.product_dir(product) / "models" / "current.json"

    # Zarr stores (formats in geoembed.stores) -------------------------------------------------

    def write_samples(self, product: str, region_key: str, ds: xr.Dataset) -> Path:
        path = self.samples_path(product, region_key)
        stores.write_samples(path, ds)
        return path

    def open_samples(self, product: str, region_key: str) -> xr.Dataset:
        return stores.open_samples(self.samples_path(product, region_key))

    def ensure_product_store(self, product: str, layout: ProductLayout, dim: int, attrs: dict) -> bool:
        return stores.ensure_product_store(self.embeddings_path(product), layout, dim, attrs)

    def write_product_region(self, product: str, layout: ProductLayout, region: int, **arrays) -> None:
        stores.write_product_region(self.embeddings_path(product), layout, region, **arrays)

    def open_product(self, product: str) -> xr.Dataset:
        return stores.open_product(self.embeddings_path(product))
