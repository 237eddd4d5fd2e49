"""Where a product's data lives: working data (samples, stencil, pictures) under ``<root>/<product>/``,
a folder that git ignores by default; the published outputs (the embedding Zarr store and the model
artifacts) there too, or under ``<outputs>/<product>/`` on an object store (``s3://bucket/prefix``,
through fsspec/s3fs; credentials and endpoint from the environment: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3-compatible servers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import xarray as xr
from pydantic import Field, field_validator
from upath import UPath

from geoembed.core.sinks import zarr as zarr_stores
from geoembed.landcover import stores
from geoembed.landcover.stencil import StencilState
from geoembed.core.grids.h3 import ProductLayout

AnyPath = Path | UPath
OUTPUTS_ENV_VAR = "GEOEMBED_OUTPUTS"  # where published outputs go (a folder or s3:// prefix); default: the data folder


class ProductStorage(dg.ConfigurableResource):
    """Storage for products: samples, stencil and pictures in ``root``; the embedding Zarr store and the
    models in ``outputs`` (default: ``root``)."""

    root: str = Field(default="data", description="Local folder holding one sub-folder per product.")
    outputs: str | None = Field(default=None, description="Where the embedding store and models go: a folder "
                                "or an object-store URL such as s3://bucket/prefix (default: root).")

    @field_validator("outputs")
    @classmethod
    def _known_protocol(cls, value: str | None) -> str | None:
        if value and "://" in value:
            import fsspec

            protocol = value.split("://", 1)[0]
            try:
                fsspec.get_filesystem_class(protocol)
            except (ImportError, ValueError) as exc:
                raise ValueError(f"outputs {value!r}: no filesystem for {protocol}:// ({exc})") from None
        return value or None

    def product_dir(self, product: str) -> Path:
        path = Path(self.root).expanduser().resolve() / product
        path.mkdir(parents=True, exist_ok=True)
        return path

    def outputs_dir(self, product: str) -> AnyPath:
        """The product's published outputs: a local folder or an object-store prefix."""
        if self.outputs is None:
            return self.product_dir(product)
        if "://" in self.outputs:
            url = self.outputs.rstrip("/")
            return UPath(url, **zarr_stores.storage_options(url)) / product
        path = Path(self.outputs).expanduser().resolve() / product
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_path(self, product: str, *parts: str) -> AnyPath:
        """A published output of the product (local, or on the object store)."""
        path = self.outputs_dir(product)
        for part in parts:
            path = path / part
        return path

    def work_path(self, product: str, *parts: str) -> Path:
        """Working data of the product (always local)."""
        return self.product_dir(product).joinpath(*parts)

    def read_table(self, path: AnyPath, columns: list[str] | None = None) -> "pa.Table":
        """A Parquet file (local or on the object store)."""
        import pyarrow.parquet as pq

        if zarr_stores.is_remote(path):
            with path.open("rb") as handle:
                return pq.read_table(handle, columns=columns)
        return pq.read_table(str(path), columns=columns)

    def write_table(self, path: AnyPath, table: "pa.Table") -> None:
        """A Parquet file, written atomically (see ``write_bytes``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(path, sink.getvalue().to_pybytes())

    def embeddings_path(self, product: str) -> AnyPath:
        return self.outputs_dir(product) / "embeddings.zarr"

    def model_dir(self, product: str, version: str) -> AnyPath:
        path = self.outputs_dir(product) / "models" / version
        if not zarr_stores.is_remote(path):
            path.mkdir(parents=True, exist_ok=True)
        return path

    def picture_path(self, product: str, name: str) -> Path:
        path = self.product_dir(product) / "pictures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_json(self, path: AnyPath, payload: dict) -> None:
        """Write JSON atomically (a reader never sees half a file)."""
        self.write_bytes(path, json.dumps(payload, indent=2, sort_keys=True).encode())

    def read_json(self, path: AnyPath, what: str) -> dict:
        if not path.exists():
            raise FileNotFoundError(f"{what} ({path}) does not exist yet; materialize it first")
        return json.loads(path.read_text())

    def write_bytes(self, path: AnyPath, data: bytes) -> None:
        """Write a file atomically: locally a temporary file renamed into place; on an object store one
        PUT, which is atomic (readers see the old object or the new one)."""
        if zarr_stores.is_remote(path):
            path.write_bytes(data)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def stencil_path(self, product: str) -> Path:
        return self.product_dir(product) / "stencil.json"

    def read_stencil(self, product: str) -> StencilState:
        """The product's current H3 stencil (written by ``h3_regions``)."""
        return StencilState.model_validate(self.read_json(self.stencil_path(product),
                                                          f"the H3 stencil of product {product!r}"))

    def read_stencil_if_any(self, product: str) -> StencilState | None:
        return self.read_stencil(product) if self.stencil_path(product).exists() else None

    def write_stencil(self, product: str, state: StencilState) -> Path:
        path = self.stencil_path(product)
        self.write_json(path, state.to_json())
        return path

    def known_source_versions(self, product: str) -> dict[str, tuple[str, str]]:
        """{source file: (fingerprint, content version)} as the last stencil saw them (empty before one)."""
        state = self.read_stencil_if_any(product)
        return state.known_versions() if state else {}

    def current_model_path(self, product: str) -> AnyPath:
        return self.outputs_dir(product) / "models" / "current.json"

    # Zarr stores (formats in geoembed.landcover.stores) -------------------------------------------------

    def write_samples(self, product: str, regions: dict[str, xr.Dataset]) -> Path:
        """Several regions' samples in one store (see ``stores.write_samples_batch``); its path."""
        return stores.write_samples_batch(self.product_dir(product) / "samples", regions)

    def has_samples(self, product: str, region_key: str) -> bool:
        return stores.has_region_samples(self.product_dir(product) / "samples", region_key)

    def open_samples(self, product: str, region_key: str) -> xr.Dataset:
        return stores.open_region_samples(self.product_dir(product) / "samples", region_key)

    def ensure_product_store(self, product: str, layout: ProductLayout, dim: int, attrs: dict) -> bool:
        return stores.ensure_product_store(self.embeddings_path(product), layout, dim, attrs)

    def write_product_region(self, product: str, layout: ProductLayout, region: int, **arrays) -> str:
        """Commit one region's rows; the snapshot id that holds them."""
        return stores.write_product_region(self.embeddings_path(product), layout, region, **arrays)

    def write_product_regions(self, product: str, layout: ProductLayout, writes: list) -> str:
        """Commit several regions' rows (``stores.RegionWrite``) at once; the snapshot id that holds them."""
        return stores.write_product_regions(self.embeddings_path(product), layout, writes)

    def open_product(self, product: str, chunks: dict | str | None = None) -> xr.Dataset:
        """The product store (``chunks={}``: dask arrays with the store's chunks)."""
        return stores.open_product(self.embeddings_path(product), chunks=chunks)
