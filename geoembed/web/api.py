"""The HTTP API behind the map: the products in the database, "places like this one" by cell, point or
chip (optionally inside a bbox), and one cell's details.

FastAPI documents it (OpenAPI at ``/openapi.json``, pages at ``/docs``). Every query is parameterised
and runs on a read-only session, so the documented read-only role is enough. Bad input is a 4xx whose
``detail`` names the input and the problem: 422 for a parameter out of its type or range (FastAPI's
validation), 400 for a value the search refuses, 404 for an unknown product or cell.
"""

from __future__ import annotations

import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import h3
import h3.api.basic_int as h3i
from fastapi import FastAPI, Query, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from psycopg import sql
from pydantic import BaseModel

from geoembed.core.errors import InputError
from geoembed.core.sinks import search
from geoembed.core.sinks.pgvector import SCHEMA, ModelTable, latest_model_table, read_table_embeddings, registered_tables
from geoembed.core.grids.mgrs import ChipRef
from geoembed.imagery.layout import ImageryLayout
from geoembed.landcover.stores import cell_sample
from geoembed.web.layers import MAX_VIEW_CELLS, MAX_VIEW_CHIPS, WORLD, Bbox, ChipLayer, ColourLayer
from geoembed_resources.postgres import PostgresDatabase
from geoembed_resources.storage import ProductStorage

STATIC = Path(__file__).parent / "static"
# Front-end libraries: installed from the npm registry by scripts/setup.sh (npm ci, package-lock.json)
# and served from here, so the page loads nothing from the internet.
VENDOR = Path(__file__).parent / "node_modules"


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
    # From the region's samples (when the server sees the product's storage and the samples are there):
    status: str | None = None  # ok, edge, partial_nodata, ...
    dominant_class: str | None = None
    valid_fraction: float | None = None
    class_fractions: dict[str, float] | None = None  # classes present in the cell's window, largest first


class MapCells(BaseModel):
    """The cells of a view at the finest resolution that fits it, with their colours."""

    product: str
    model_version: str
    resolution: int  # H3 resolution of these cells (the product's own, or coarser parents)
    product_resolution: int
    cells: list[str]  # H3 ids
    rgb: str  # 6 hex digits per cell, in the order of ``cells``
    cells_in_product: int  # the product's own cells inside the view


class MapLayers:
    """Each product table's map layer (cells: a colour pyramid; chips: footprints and colours), built on
    first use (reading the table once) and kept."""

    def __init__(self, database: PostgresDatabase):
        self.database = database
        self._layers: dict[str, ColourLayer | ChipLayer] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, found: ModelTable) -> ColourLayer | ChipLayer:
        with self._guard:
            lock = self._locks.setdefault(found.table, threading.Lock())
        with lock:  # concurrent first requests build it once
            if found.table not in self._layers:
                with self.database.connect(read_only=True) as conn:
                    embeddings = read_table_embeddings(conn, found)
                self._layers[found.table] = (
                    ChipLayer(embeddings, int(found.meta.get("chip_size", 256))) if found.kind == "chips"
                    else ColourLayer.from_embeddings(embeddings, found.resolution))
            return self._layers[found.table]

    def warm(self) -> None:
        """Build the newest table's layer of every product (the server calls this in the background)."""
        newest: dict[str, ModelTable] = {}
        try:
            with self.database.connect(read_only=True) as conn:
                for t in registered_tables(conn):  # none before any load
                    if t.product not in newest:
                        newest[t.product] = latest_model_table(conn, t.product, t.model_version)
        except Exception as exc:  # noqa: BLE001 - requests will meet (and report) the same problem
            print(f"geoembed: could not list the products to prepare their maps: {exc}", file=sys.stderr, flush=True)
        for product, found in newest.items():
            try:
                self.get(found)
            except Exception as exc:  # noqa: BLE001 - a request will try again and answer with the error
                print(f"geoembed: could not prepare the map of {product!r}: {exc}", file=sys.stderr, flush=True)


def parse_view_bbox(value: str | None) -> Bbox:
    """A map view's 'west,south,east,north': longitudes may run past +-180 (a wrapped view)."""
    if value is None:
        return WORLD
    try:
        west, south, east, north = (float(v) for v in value.split(","))
    except ValueError:
        raise search.SearchInputError(f"bbox {value!r} must be four numbers: west,south,east,north") from None
    if not (-90 <= south < north <= 90) or not west < east or not all(abs(v) <= 540 for v in (west, east)):
        raise search.SearchInputError(
            f"bbox {value!r} is invalid: need west<east (longitudes within +-540), -90<=south<north<=90")
    return Bbox(west, south, east, north)


def create_app(database: PostgresDatabase, storage: ProductStorage | None = None, warm_layers: bool = False) -> FastAPI:
    """The application over a database; ``storage`` (where the products' outputs are) serves chip thumbnails."""
    layers = MapLayers(database)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if warm_layers:  # the first map view need not wait for the PCA of a large product
            threading.Thread(target=layers.warm, name="warm-colour-layers", daemon=True).start()
        yield

    app = FastAPI(title="geoembed", summary="Find places like this one in geospatial embedding products",
                  description=__doc__, version="1", lifespan=lifespan)
    app.add_middleware(GZipMiddleware, minimum_size=1000)

    @app.exception_handler(InputError)
    async def _bad_input(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(LookupError)
    async def _not_found(_: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc).strip("'\"")})

    def table_of(product: str, model_version: str | None, kind: str) -> ModelTable:
        with database.connect(read_only=True) as conn:
            found = latest_model_table(conn, product, model_version)
        if found.kind != kind:
            names = {"h3_cells": "H3 cells", "chips": "imagery chips"}
            raise search.SearchInputError(f"product {product!r} holds {names[found.kind]}, not {names[kind]}")
        return found

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
        """The cell's row: centroid, region, and the model and source data versions that made its embedding;
        with the product's storage, also what its samples say: status, dominant class, class fractions."""
        key = search.parse_cell(cell)
        found = table_of(product, model_version, "h3_cells")
        with database.connect(read_only=True) as conn:
            row = conn.execute(sql.SQL("SELECT region, lon, lat, model_version, source_version FROM {} WHERE h3 = %s")
                               .format(sql.Identifier(SCHEMA, found.table)), (key,)).fetchone()
        if row is None:
            raise LookupError(f"cell {h3.int_to_str(key)} has no embedding in {product!r} (model {found.model_version})")
        region, lon, lat, model, source = row
        ring = [[x, y] for y, x in h3i.cell_to_boundary(key)]
        sample = None
        if storage is not None and storage.has_samples(product, f"{int(region):x}"):
            sample = cell_sample(storage.open_samples(product, f"{int(region):x}"), key)
        return CellDetails(product=product, cell=h3.int_to_str(key), region=f"{int(region):x}", lon=lon, lat=lat,
                           model_version=model, source_version=source, table=f"{SCHEMA}.{found.table}",
                           geometry={"type": "Polygon", "coordinates": [ring + ring[:1]]},
                           **({} if sample is None else {
                               "status": sample.status, "dominant_class": sample.dominant_class,
                               "valid_fraction": sample.valid_fraction, "class_fractions": sample.class_fractions}))

    @app.get("/api/map/cells", response_model=MapCells, summary="A view's cells, coloured by their embedding")
    def map_cells(
        product: Annotated[str, Query(description="product name (an H3 product)")],
        bbox: Annotated[str | None, Query(description="the view: west,south,east,north (longitudes may wrap)")] = None,
        max_cells: Annotated[int, Query(ge=1, le=50_000, description="the most cells to send")] = MAX_VIEW_CELLS,
        model_version: Annotated[str | None, Query(description="default: the newest loaded")] = None,
    ) -> MapCells:
        """The product's cells in the view at the finest H3 resolution that fits ``max_cells`` (coarser
        cells carry the mean colour of their children). Colours: the first 3 principal components of the
        embeddings as RGB, as on the Dagster map."""
        view_box = parse_view_bbox(bbox)
        found = table_of(product, model_version, "h3_cells")
        view = layers.get(found).view(view_box, max_cells)
        return MapCells(product=product, model_version=found.model_version, resolution=view.resolution,
                        product_resolution=found.resolution, cells=[f"{c:x}" for c in view.cells.tolist()],
                        rgb=view.rgb.tobytes().hex(), cells_in_product=view.cells_in_product)

    @app.get("/api/map/chips", summary="A view's imagery chips: footprints coloured by their embedding (GeoJSON)")
    def map_chips(
        product: Annotated[str, Query(description="product name (an imagery product)")],
        bbox: Annotated[str | None, Query(description="the view: west,south,east,north (longitudes may wrap)")] = None,
        max_chips: Annotated[int, Query(ge=1, le=50_000, description="the most chips to send")] = MAX_VIEW_CHIPS,
        model_version: Annotated[str | None, Query(description="default: the newest loaded")] = None,
    ) -> dict:
        """Each place's newest chip in the view (footprint, ``chip`` reference, ``colour``: PCA of the
        embeddings as RGB); ``chips_in_view`` counts them before ``max_chips``."""
        view_box = parse_view_bbox(bbox)
        found = table_of(product, model_version, "chips")
        view = layers.get(found).view(view_box, max_chips)
        return {"type": "FeatureCollection", "features": view.chips,
                "properties": {"product": product, "model_version": found.model_version,
                               "chips_in_view": view.chips_in_view}}

    @app.get("/api/chips/thumbnail", summary="A chip's RGB thumbnail (PNG)",
             responses={200: {"content": {"image/png": {}}}})
    def chip_thumbnail(
        product: Annotated[str, Query(description="product name (an imagery product)")],
        chip: Annotated[str, Query(description="TILE/YYYY-MM-DD/ROW_COL")],
    ) -> Response:
        ref = ChipRef.parse(chip)
        if ref.date is None:
            raise search.SearchInputError(f"chip {chip!r} needs its date: TILE/YYYY-MM-DD/ROW_COL")
        table_of(product, None, "chips")  # a product of the database, before any path is made of its name
        if storage is None:
            raise LookupError("this server was started without product storage: no thumbnails")
        path = ImageryLayout(storage.outputs_dir(product), Path()).thumbnail(ref.tile, ref.date, ref.chip_id)
        try:
            return Response(path.read_bytes(), media_type="image/png")
        except FileNotFoundError:
            raise LookupError(f"chip {chip} of {product!r} has no thumbnail (no data, or not chipped)") from None

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        if not (VENDOR / "maplibre-gl").is_dir():
            raise LookupError("the map's front-end libraries are not installed: run scripts/setup.sh (npm ci)")
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if VENDOR.is_dir():
        app.mount("/vendor", StaticFiles(directory=VENDOR), name="vendor")
    return app
