"""The HTTP API behind the map: the products in the database, "places like this one" by cell, point or
chip (optionally inside a bbox), and one cell's details.

FastAPI documents it (OpenAPI at ``/openapi.json``, pages at ``/docs``). Every query is parameterised
and runs on a read-only session, so the documented read-only role is enough. Bad input is a 4xx whose
``detail`` names the input and the problem: 422 for a parameter out of its type or range (FastAPI's
validation), 400 for a value the search refuses, 404 for an unknown product or cell.
"""

from __future__ import annotations

from typing import Annotated, Any

import h3
import h3.api.basic_int as h3i
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from psycopg import sql
from pydantic import BaseModel

from geoembed.core.errors import InputError
from geoembed.core.sinks import search
from geoembed.core.sinks.pgvector import SCHEMA, latest_model_table, registered_tables
from geoembed_resources.postgres import PostgresDatabase


class ProductTable(BaseModel):
    """One loaded model version of a product."""

    product: str
    model_version: str
    kind: str  # h3_cells or chips
    dim: int
    resolution: int  # H3 resolution (cells) or 0 (chips)
    table: str
    rows: int  # PostgreSQL's estimate (exact after ANALYZE)
    created_at: str


class CellDetails(BaseModel):
    """A cell as its product's table holds it, with its hexagon."""

    product: str
    cell: str
    region: str
    lon: float
    lat: float
    model_version: str
    source_version: str
    table: str
    geometry: dict[str, Any]


def create_app(database: PostgresDatabase) -> FastAPI:
    app = FastAPI(title="geoembed", summary="Find places like this one in geospatial embedding products",
                  description=__doc__, version="1")

    @app.exception_handler(InputError)
    async def _bad_input(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(LookupError)
    async def _not_found(_: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc).strip("'\"")})

    @app.get("/api/products", response_model=list[ProductTable], summary="The products in the database")
    def products() -> list[ProductTable]:
        """Every product's loaded model versions, newest first within a product."""
        with database.connect(read_only=True) as conn:
            return [ProductTable(**vars(t)) for t in registered_tables(conn)]

    @app.get("/api/similar", summary="The k places most similar to a cell, a point or a chip (GeoJSON)")
    def similar(
        product: Annotated[str, Query(description="product name, as /api/products lists it")],
        cell: Annotated[str | None, Query(description="H3 cell id (hex or integer)")] = None,
        lon: Annotated[float | None, Query(ge=-180, le=180, description="a point: its cell or chip is the query")] = None,
        lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
        chip: Annotated[str | None, Query(description="an imagery chip: TILE/YYYY-MM-DD/ROW_COL or TILE/ROW_COL")] = None,
        k: Annotated[int, Query(ge=1, le=10_000, description="how many places")] = 10,
        bbox: Annotated[str | None, Query(description="only places inside west,south,east,north (degrees)")] = None,
        model_version: Annotated[str | None, Query(description="default: the newest loaded")] = None,
    ) -> dict:
        """A FeatureCollection of the k nearest places, nearest first (``rank``, ``distance``: cosine);
        the query itself is left out. k places come back whenever the product (or the area) holds k."""
        if (lon is None) != (lat is None):
            raise search.SearchInputError("give lon and lat together")
        query = search.SimilarQuery(product, cell=cell, chip=chip, lonlat=(lon, lat) if lon is not None else None,
                                    k=k, bbox=bbox, model_version=model_version).checked()
        with database.connect(read_only=True) as conn:
            result, found = search.find_similar(conn, query)
        collection = search.result_geojson(result, found)
        collection["properties"] |= {"product": product, "k": k, "plan": result.plan, "table": result.table}
        return collection

    @app.get("/api/cells/{cell}", response_model=CellDetails, summary="One cell of an H3 product")
    def cell_details(
        cell: str,
        product: Annotated[str, Query(description="product name")],
        model_version: Annotated[str | None, Query(description="default: the newest loaded")] = None,
    ) -> CellDetails:
        """The cell's row: centroid, region, and the model and source data versions that made its embedding."""
        key = search.parse_cell(cell)
        with database.connect(read_only=True) as conn:
            found = latest_model_table(conn, product, model_version)
            if found.kind != "h3_cells":
                raise search.SearchInputError(f"product {product!r} holds {found.kind.replace('_', ' ')}, not H3 cells")
            row = conn.execute(sql.SQL("SELECT region, lon, lat, model_version, source_version FROM {} WHERE h3 = %s")
                               .format(sql.Identifier(SCHEMA, found.table)), (key,)).fetchone()
        if row is None:
            raise LookupError(f"cell {h3.int_to_str(key)} has no embedding in {product!r} (model {found.model_version})")
        region, lon, lat, model, source = row
        ring = [[x, y] for y, x in h3i.cell_to_boundary(key)]
        return CellDetails(product=product, cell=h3.int_to_str(key), region=f"{int(region):x}", lon=lon, lat=lat,
                           model_version=model, source_version=source, table=f"{SCHEMA}.{found.table}",
                           geometry={"type": "Polygon", "coordinates": [ring + ring[:1]]})

    return app
