"""Change over time and Clay-layout GeoParquet, read back with pyarrow, geopandas and DuckDB."""

from __future__ import annotations

import json

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from geoembed.imagery.change import DateEmbeddings, change_over_time, change_plot
from geoembed.imagery.export import DateRows, clay_file_name, lineage_metadata, write_tile_geoparquet


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_change_flags_exactly_the_chips_below_the_threshold_against_their_first_date():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(4, 8)))
    later = base.copy()
    later[2] = -base[2]  # chip 2 changed completely
    ids, rows, cols = np.array(["0_0", "0_1", "1_0", "1_1"]), np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    first = DateEmbeddings("2020-01-01", ids[:3], rows[:3], cols[:3], base[:3])
    second = DateEmbeddings("2020-02-01", ids[[0, 1, 2]], rows[:3], cols[:3], later[:3])
    # chip 1_1 first appears on the third date: that date is its baseline
    third = DateEmbeddings("2020-03-01", ids[[3]], rows[[3]], cols[[3]], base[[3]])
    table = change_over_time("33UUU", [second, third, first], threshold=0.9).to_pydict()
    rows_of = {(c, str(d)): (str(b), s, f) for c, d, b, s, f in zip(table["chip_id"], table["date"],
                                                                      table["baseline_date"], table["similarity"],
                                                                      table["changed"])}
    assert rows_of[("1_0", "2020-02-01")] == ("2020-01-01", -1.0, True)
    assert rows_of[("0_0", "2020-02-01")][1:] == (1.0, False)
    assert rows_of[("1_1", "2020-03-01")] == ("2020-03-01", 1.0, False)
    assert sum(table["changed"]) == 1
    png = change_plot(change_over_time("33UUU", [first, second], 0.9), "33UUU", 0.9)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_clay_file_name():
    assert clay_file_name("33UUU", ["2017-03-18", "2017-02-16"], 1) == "33UUU_20170216_20170318_v001.gpq"


def test_geoparquet_in_clays_layout(tmp_path):
    dim = 16
    boxes = np.array([shapely.box(12 + i * 0.03, 52, 12.03 + i * 0.03, 52.03) for i in range(5)], dtype=object)
    rng = np.random.default_rng(0)

    def dates():
        for date in ("2017-02-16", "2017-03-18"):
            yield DateRows(date, [f"s3://bucket/cube.zarr#chip=0_{i}" for i in range(5)],
                           rng.normal(size=(5, dim)).astype(np.float32), boxes, "a" * 16, [f"0_{i}" for i in range(5)])

    path = tmp_path / clay_file_name("33UUU", ["2017-02-16", "2017-03-18"], 1)
    written = write_tile_geoparquet(path, dim, dates(), np.concatenate([boxes, boxes]),
                                    lineage_metadata("b" * 16, {"kind": "geoembed"}, {"2017-02-16": "a" * 16}))
    assert written["rows"] == 10
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups == 2  # one per date
    schema = parquet.schema_arrow
    assert schema.names == ["source_url", "date", "embeddings", "geometry"]
    assert schema.field("date").type == pa.date32() and schema.field("source_url").type == pa.string()
    tensor = schema.field("embeddings").type
    assert isinstance(tensor, pa.FixedShapeTensorType) and tensor.shape == [dim] and tensor.value_type == pa.float32()
    geo = json.loads(schema.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["crs"]["id"] == {"authority": "OGC", "code": "CRS84"}
    assert schema.metadata[b"geoembed:model_version"] == b"b" * 16
    frame = gpd.read_parquet(path)
    assert len(frame) == 10 and frame.crs.to_string() in ("OGC:CRS84", "EPSG:4326")
    assert frame.geometry.iloc[0].equals(boxes[0]) and len(frame["embeddings"].iloc[0]) == dim
    tensors = pq.read_table(path)["embeddings"].combine_chunks().to_numpy_ndarray()
    assert tensors.shape == (10, dim) and tensors.dtype == np.float32
    counts = duckdb.sql(f"SELECT date, count(*), len(any_value(embeddings)) FROM read_parquet('{path}') "
                        "GROUP BY date ORDER BY date").fetchall()
    assert [(str(d), n, k) for d, n, k in counts] == [("2017-02-16", 5, dim), ("2017-03-18", 5, dim)]
