"""Dagster resources: the only code that touches external systems (files, object stores, devices)."""

from geoembed_resources.compute import InferenceDevice
from geoembed_resources.dask_cluster import DaskCluster
from geoembed_resources.postgres import PostgresDatabase
from geoembed_resources.rasters import RasterReader
from geoembed_resources.storage import ProductStorage

__all__ = ["DaskCluster", "InferenceDevice", "PostgresDatabase", "ProductStorage", "RasterReader"]
