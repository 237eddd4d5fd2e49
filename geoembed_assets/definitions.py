"""The geoembed code location: one asset graph per configured product, plus shared resources.

Each pipeline is a folder of ``geoembed_assets`` whose builder turns a product's settings into its
Definitions:

    landcover/   H3 land-cover embeddings        build_landcover_product  (geoembed/landcover)
    imagery/     Sentinel-2 chips on MGRS tiles  build_imagery_product    (geoembed/imagery)
    quadkey/     imagery chips on quadkey tiles  build_quadkey_product    (geoembed/quadkey)
    ranking/     per-station image ranking       build_ranking_product    (geoembed/ranking)

Products come from the YAML files named in GEOEMBED_PRODUCT (comma-separated); by default the
global MODIS product (products/modis_global.yaml). Outputs go under GEOEMBED_DATA_DIR (default ./data).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from geoembed.core.errors import InputError
from geoembed.core.settings import product_files_from_env
from geoembed.imagery.settings import ImageryProductSettings
from geoembed.products import AnyProduct, load_product
from geoembed.quadkey.settings import QuadkeyProductSettings
from geoembed.ranking.settings import RankingProductSettings
from geoembed_assets.core.executors import executor_from_env
from geoembed_assets.imagery import build_imagery_product
from geoembed_assets.landcover import build_landcover_product
from geoembed_assets.quadkey import build_quadkey_product
from geoembed_assets.ranking import build_ranking_product
from geoembed_resources import DaskCluster, InferenceDevice, PostgresDatabase, ProductStorage, RasterReader
from geoembed_resources.postgres import DSN_ENV_VAR
from geoembed_resources.storage import OUTPUTS_ENV_VAR

DATA_DIR_ENV_VAR = "GEOEMBED_DATA_DIR"
DASK_ENV_VAR = "GEOEMBED_DASK_SCHEDULER"


def local_resources(data_dir: str | Path, **overrides: dg.ConfigurableResource) -> dict[str, dg.ConfigurableResource]:
    """Every resource the assets need, for a deployment whose data lives in ``data_dir``: the embedded
    PostgreSQL there, a local Dask cluster, the GPU if torch sees one. ``overrides`` replace entries."""
    data_dir = Path(data_dir)
    resources = {
        "raster_reader": RasterReader(),
        "storage": ProductStorage(root=str(data_dir)),
        "inference_device": InferenceDevice(),
        "database": PostgresDatabase(embedded_dir=str(data_dir / "postgres")),
        "dask_cluster": DaskCluster(),
    }
    unknown = set(overrides) - set(resources)
    if unknown:
        raise KeyError(f"unknown resource keys {sorted(unknown)}; known: {sorted(resources)}")
    return {**resources, **overrides}


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources as the environment configures them (the code location's defaults)."""
    data_dir = os.environ.get(DATA_DIR_ENV_VAR, str(Path.cwd() / "data"))
    overrides: dict[str, dg.ConfigurableResource] = {
        # GEOEMBED_OUTPUTS (e.g. s3://bucket/prefix): the embedding store and models on an object store.
        "storage": ProductStorage(root=data_dir, outputs=os.environ.get(OUTPUTS_ENV_VAR) or None),
        # GEOEMBED_DASK_SCHEDULER (tcp://host:8786): an existing Dask cluster instead of a local one.
        "dask_cluster": DaskCluster(scheduler_address=os.environ.get(DASK_ENV_VAR) or None),
    }
    if os.environ.get(DSN_ENV_VAR):
        # An external PostgreSQL (credentials stay in the environment), else the embedded server.
        overrides["database"] = PostgresDatabase(dsn=dg.EnvVar(DSN_ENV_VAR),
                                                 embedded_dir=str(Path(data_dir) / "postgres"))
    return local_resources(data_dir, **overrides)


def product_definitions(product: AnyProduct) -> dg.Definitions:
    """The asset graph of one product, by its pipeline."""
    if isinstance(product, ImageryProductSettings):
        return build_imagery_product(product).definitions
    if isinstance(product, QuadkeyProductSettings):
        return build_quadkey_product(product).definitions
    if isinstance(product, RankingProductSettings):
        return build_ranking_product(product).definitions
    return build_landcover_product(product).definitions


def build_definitions(products: list[AnyProduct], resources: dict | None = None) -> dg.Definitions:
    names = [p.name for p in products]
    if len(set(names)) != len(names):
        raise ValueError(f"product names must be unique, got {names}")
    return dg.Definitions.merge(
        *[product_definitions(p) for p in products],
        # GEOEMBED_EXECUTOR: unset, every step in the run worker; multiprocess; k8s, a pod per step (deploy/k8s).
        dg.Definitions(resources=resources if resources is not None else default_resources(),
                       executor=executor_from_env()),
    )


def _load() -> dg.Definitions:
    return build_definitions([load_product(path) for path in product_files_from_env()])


try:
    defs = _load()
except InputError as error:
    # `dagster dev` and the code server show the error with its frames: re-raised here, the frames are
    # this one line, and the message names the product file and the problem.
    raise type(error)(str(error)) from None
