"""The geoembed code location: one asset graph per configured product, plus shared resources.

Products come from the YAML files named in GEOEMBED_PRODUCT (comma-separated); by default the
global MODIS product (products/modis_global.yaml). Outputs go under GEOEMBED_DATA_DIR (default ./data).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from geoembed.settings import ProductSettings, load_settings, product_files_from_env
from geoembed_assets.executors import executor_from_env
from geoembed_assets.product import ProductAssets, build_product
from geoembed_resources import InferenceDevice, PostgresDatabase, ProductStorage, RasterReader
from geoembed_resources.postgres import DSN_ENV_VAR

DATA_DIR_ENV_VAR = "GEOEMBED_DATA_DIR"
OUTPUTS_ENV_VAR = "GEOEMBED_OUTPUTS"


def default_resources() -> dict[str, dg.ConfigurableResource]:
    data_dir = os.environ.get(DATA_DIR_ENV_VAR, str(Path.cwd() / "data"))
    # An external PostgreSQL when GEOEMBED_PG_DSN is set (credentials stay in the environment),
    # else the embedded server under the data folder.
    dsn = dg.EnvVar(DSN_ENV_VAR) if os.environ.get(DSN_ENV_VAR) else None
    return {
        "raster_reader": RasterReader(),
        # GEOEMBED_OUTPUTS (e.g. s3://bucket/prefix): the embedding store and models on an object store.
        "storage": ProductStorage(root=data_dir, outputs=os.environ.get(OUTPUTS_ENV_VAR) or None),
        "inference_device": InferenceDevice(),
        "database": PostgresDatabase(dsn=dsn, embedded_dir=str(Path(data_dir) / "postgres")),
    }


def build_definitions(products: list[ProductSettings], resources: dict | None = None) -> dg.Definitions:
    names = [p.name for p in products]
    if len(set(names)) != len(names):
        raise ValueError(f"product names must be unique, got {names}")
    built: list[ProductAssets] = [build_product(p) for p in products]
    return dg.Definitions.merge(
        *[b.definitions for b in built],
        # GEOEMBED_EXECUTOR=k8s: one Kubernetes pod per step (deploy/k8s); unset: Dagster's default.
        dg.Definitions(resources=resources if resources is not None else default_resources(),
                       executor=executor_from_env()),
    )


def _load() -> dg.Definitions:
    return build_definitions([load_settings(path) for path in product_files_from_env()])


defs = _load()
