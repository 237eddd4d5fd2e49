"""The serving index every pipeline's table gets: the search indexes and the cosine HNSW index of the
current model's PostgreSQL table, built once after the bulk load, with its recall against exact search
checked."""

import time
from typing import Callable

import dagster as dg

from geoembed.core.sinks import pgvector as db, search
from geoembed_assets.core.failures import fails_clearly
from geoembed_assets.core.policies import REFRESH_WHEN_UPSTREAM_CHANGES
from geoembed_resources import PostgresDatabase, ProductStorage

RECALL_TARGET = 0.95


def index_asset(product: str, key: dg.AssetKey, table_key: dg.AssetKey, rows_are: str, single: Callable,
                description: str) -> dg.AssetsDefinition:
    """The index asset of ``product``'s table (``rows_are``: what a row is, for the check's description)."""

    @single(key=key, automation_condition=REFRESH_WHEN_UPSTREAM_CHANGES, deps=[table_key], code_version="1",
            kinds={"postgres"}, description=description, check_specs=[dg.AssetCheckSpec(
                "ann_recall_at_10", asset=key,
                description=f"Recall@10 of the search against exact search is at least {RECALL_TARGET}, on query "
                            f"{rows_are} drawn over distinct vectors, overall and outside identical groups.")])
    @fails_clearly
    def serving_index(context: dg.AssetExecutionContext, storage: ProductStorage, database: PostgresDatabase):
        current = storage.read_json(storage.current_model_path(product), f"the model of {product!r}")
        with database.connect() as conn:
            found = db.latest_model_table(conn, product, current["model_version"])
            if db.ensure_vector_ids(conn, found):
                context.log.info(f"{found.table}: rows given the ids of their distinct vectors (made before them)")
            start = time.perf_counter()
            built = db.build_search_indexes(conn, found.table)
            build_seconds = time.perf_counter() - start
            report = search.recall_report(conn, found, n_queries=100, k=10)
        context.log.info(f"index on {found.table}: {report.rows:,} rows, {report.distinct_vectors:,} distinct vectors, "
                         f"recall@10 {report.overall:.3f} ({report.outside_identical_groups:.3f} outside identical groups)")
        metadata = report.to_metadata()
        return dg.MaterializeResult(
            metadata={"table": f"{db.SCHEMA}.{found.table}", "model_version": found.model_version,
                      "rows": report.rows, "distinct_vectors": report.distinct_vectors, "built_now": built,
                      "build_seconds": round(build_seconds, 2), "recall_at_10": metadata["recall_at_k"],
                      "recall_at_10_outside_identical_groups": metadata["recall_outside_identical_groups"]},
            check_results=[dg.AssetCheckResult(check_name="ann_recall_at_10", passed=report.worst >= RECALL_TARGET,
                                               metadata=metadata)],
        )

    return serving_index
