"""The ranking pipeline's PostgreSQL tables (schema ``geoembed``), as FPE keeps them: ``ranking_models``
(one row per product, station and model code: variable, split sizes, tau, versions, where the report and
predictions are) and ``ranking_predictions`` (one row per image). Writing a station-model replaces its rows
in one transaction, so a re-run never leaves two versions side by side."""

from __future__ import annotations

import json

import pandas as pd
import psycopg
from psycopg import sql

from geoembed.core.sinks.pgvector import SCHEMA, ddl_transaction

MODELS, PREDICTIONS = "ranking_models", "ranking_predictions"
PREDICTION_COLUMNS = ("image_id", "imageset_id", "filename", "timestamp", "value", "split", "daytime", "score")


def ensure_tables(conn: psycopg.Connection) -> None:
    with ddl_transaction(conn):
        conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {}.{} (
            product text NOT NULL, station text NOT NULL, model_code text NOT NULL,
            station_id text NOT NULL, station_name text, variable text NOT NULL, model_version text NOT NULL,
            dataset_version text NOT NULL, split_method text NOT NULL, train_pairs integer, validation_pairs integer,
            train_images integer, validation_images integer, validation_tau double precision,
            taus jsonb NOT NULL, lineage jsonb NOT NULL, report text, predictions text,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (product, station, model_code))""").format(sql.Identifier(SCHEMA), sql.Identifier(MODELS)))
        conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {}.{} (
            product text NOT NULL, station text NOT NULL, model_code text NOT NULL, model_version text NOT NULL,
            image_id text NOT NULL, imageset_id text, filename text, timestamp timestamptz NOT NULL,
            value double precision, split text NOT NULL, daytime boolean NOT NULL, score real NOT NULL,
            PRIMARY KEY (product, station, model_code, image_id))""").format(
            sql.Identifier(SCHEMA), sql.Identifier(PREDICTIONS)))


def replace_predictions(conn: psycopg.Connection, product: str, station: str, model_code: str, model_version: str,
                        predictions: pd.DataFrame) -> int:
    """The station-model's prediction rows replaced by ``predictions`` (one transaction, COPY)."""
    ensure_tables(conn)
    target = sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(PREDICTIONS))
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ("product", "station", "model_code", "model_version",
                                                             *PREDICTION_COLUMNS))
    with conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {} WHERE product = %s AND station = %s AND model_code = %s").format(target),
                     (product, station, model_code))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(target, columns)) as copy:
            for row in predictions[list(PREDICTION_COLUMNS)].itertuples(index=False):
                value = None if pd.isna(row.value) else float(row.value)
                copy.write_row((product, station, model_code, model_version, str(row.image_id), str(row.imageset_id),
                                row.filename, row.timestamp.to_pydatetime(), value, row.split, bool(row.daytime),
                                float(row.score)))
    return len(predictions)


def replace_model(conn: psycopg.Connection, row: dict) -> None:
    """The station-model's metadata row (replacing an earlier one)."""
    ensure_tables(conn)
    payload = {**row, "taus": json.dumps(row["taus"]), "lineage": json.dumps(row["lineage"])}
    names = list(payload)
    with conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {}.{} WHERE product = %s AND station = %s AND model_code = %s").format(
            sql.Identifier(SCHEMA), sql.Identifier(MODELS)), (row["product"], row["station"], row["model_code"]))
        conn.execute(sql.SQL("INSERT INTO {}.{} ({}) VALUES ({})").format(
            sql.Identifier(SCHEMA), sql.Identifier(MODELS), sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names))), [payload[n] for n in names])
