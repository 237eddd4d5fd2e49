"""The serving index every pipeline's table gets: the cosine HNSW index of the current model's
PostgreSQL table, built once after the bulk load, with its recall against exact search checked."""

import time
from typing import Callable

import dagster as dg

from geoembed.core.sinks import pgvector as db
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
                description=f"Recall@10 of the HNSW index against exact search on random query {rows_are} is at "
                            f"least {RECALL_TARGET}.")])
    @fails_clearly
    def serving_index(context: dg.AssetExecutionContext, storage: ProductStorage, database: PostgresDatabase):
        current = storage.read_json(storage.current_model_path(product), f"the model of {product!r}")
        with database.connect() as conn:
            found = db.latest_model_table(conn, product, current["model_version"])
            start = time.perf_counter()
            built = db.build_hnsw_index(conn, found.table)
            build_seconds = time.perf_counter() - start
            rows = db.count_rows(conn, found.table)
            queries = min(100, rows)
            recall = db.recall_at_k(conn, found.table, n_queries=queries, k=10)
        context.log.info(f"index on {found.table}: {rows:,} rows, recall@10 {recall:.3f}")
        return dg.MaterializeResult(
            metadata={"table": f"{db.SCHEMA}.{found.table}", "model_version": found.model_version, "rows": rows,
                      "built_now": built, "build_seconds": round(build_seconds, 2), "recall_at_10": round(recall, 4)},
            check_results=[dg.AssetCheckResult(check_name="ann_recall_at_10", passed=recall >= RECALL_TARGET,
                                               metadata={"recall_at_10": round(recall, 4), "queries": queries})],
        )

    return serving_index
