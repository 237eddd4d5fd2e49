// The geoembed map: a product's cells coloured by their embedding (3 principal components as RGB, the
// Dagster map's colours), over Natural Earth country outlines (world-atlas); click a place to outline
// the k most similar places. The server sends each view's cells at the finest H3 resolution that fits
// (/api/map/cells), so the global res-5 product never reaches the browser whole.
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
// What tests and benchmarks read: timings (ms since navigation) and the last search's result.
const state = (window.geoembed = { ready: false, firstPaintMs: null, clicks: [], lastResult: null, errors: [], marks: {} });
const mark = (name) => { if (!(name in state.marks)) state.marks[name] = performance.now(); };

// Resolves at the first frame drawn after a GeoJSON source has taken new data.
function drawn(sourceId) {
  return new Promise((resolve) => {
    const loaded = (event) => {
      if (event.sourceId !== sourceId || !event.isSourceLoaded) return;
      map.off("sourcedata", loaded);
      map.once("render", () => resolve(performance.now()));
      map.triggerRepaint();
    };
    map.on("sourcedata", loaded);
  });
}

const map = new maplibregl.Map({
  container: "map",
  style: {
    version: 8,
    sources: {},
    layers: [{ id: "background", type: "background", paint: { "background-color": "#dfe8ee" } }],
  },
  center: [Number(params.get("lon") ?? 10), Number(params.get("lat") ?? 25)],
  zoom: Number(params.get("zoom") ?? 1.2),
  attributionControl: false,
  fadeDuration: 0,
});
map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
state.map = map;

// MapLibre's mouse drag-pan redraws the whole map on every press, even a click that moves nothing. In a
// browser drawing WebGL without a GPU (a server, a VM) that frame costs ~200 ms of both cores and delays
// the click's answer by as much, so mouse panning is done here: only a press that moves pans the map.
// (Touch panning stays MapLibre's. `_mousePan` is MapLibre 5's mouse half of dragPan; the version is
// pinned by package-lock.json.)
map.dragPan._mousePan.disable();
let press = null;
let dragged = false; // the last press panned the map: its click is no search
map.getCanvas().addEventListener("mousedown", (event) => {
  press = event.button === 0 ? { x: event.clientX, y: event.clientY, moved: false } : null;
  dragged = false;
});
window.addEventListener("mousemove", (event) => {
  if (!press) return;
  if (!(event.buttons & 1)) { press = null; return; }
  const dx = event.clientX - press.x, dy = event.clientY - press.y;
  if (!press.moved && Math.hypot(dx, dy) < 3) return; // MapLibre's click tolerance
  press.moved = dragged = true;
  map.getCanvas().style.cursor = "grabbing";
  map.panBy([-dx, -dy], { animate: false });
  press.x = event.clientX;
  press.y = event.clientY;
});
window.addEventListener("mouseup", () => { press = null; map.getCanvas().style.cursor = ""; });

const EMPTY = { type: "FeatureCollection", features: [] };

// Rings crossing the antimeridian are unwrapped eastwards so MapLibre draws them whole.
function unwrapRing(ring) {
  const lons = ring.map((p) => p[0]);
  if (Math.max(...lons) - Math.min(...lons) <= 180) return ring;
  return ring.map(([lon, lat]) => [lon < 0 ? lon + 360 : lon, lat]);
}

// Natural Earth rings cut at the antimeridian jump from -180 to 180: made continuous, so MapLibre draws
// no seam across the world; a ring around a pole (Antarctica) is closed along that pole.
function continuousRing(ring) {
  const out = [ring[0].slice()];
  for (let i = 1; i < ring.length; i++) {
    let lon = ring[i][0];
    const previous = out[i - 1][0];
    while (lon - previous > 180) lon -= 360;
    while (previous - lon > 180) lon += 360;
    out.push([lon, ring[i][1]]);
  }
  const drift = out[out.length - 1][0] - out[0][0];
  if (Math.abs(drift) > 180) {
    const pole = Math.sign(out.reduce((sum, p) => sum + p[1], 0)) * 90;
    out.push([out[out.length - 1][0], pole], [out[0][0], pole], out[0].slice());
  }
  return out;
}

function continuousGeometry(geometry) {
  if (geometry.type === "Polygon") geometry.coordinates = geometry.coordinates.map(continuousRing);
  if (geometry.type === "MultiPolygon") geometry.coordinates = geometry.coordinates.map((p) => p.map(continuousRing));
  return geometry;
}

function hexagon(cell) {
  return { type: "Polygon", coordinates: [unwrapRing(h3.cellToBoundary(cell, true))] };
}

function showError(element, message) {
  element.textContent = message;
  element.classList.add("error");
  state.errors.push(message);
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  return body;
}

// The view as the API's bbox: west<east, longitudes possibly past 180 when the world wraps.
function viewBbox() {
  const b = map.getBounds();
  let west = b.getWest(), east = b.getEast();
  if (east - west >= 360) { west = -180; east = 180; }
  const south = Math.max(b.getSouth(), -90), north = Math.min(b.getNorth(), 90);
  return [west, south, east, north].map((v) => v.toFixed(5)).join(",");
}

// The search's bbox: longitudes within [-180, 180], west > east across the antimeridian.
function searchBbox() {
  const b = map.getBounds();
  if (b.getEast() - b.getWest() >= 360) return null;
  const wrap = (lon) => ((((lon + 180) % 360) + 360) % 360) - 180;
  return [wrap(b.getWest()), Math.max(b.getSouth(), -90), wrap(b.getEast()), Math.min(b.getNorth(), 90)]
    .map((v) => v.toFixed(5)).join(",");
}

const kinds = {}; // product -> h3_cells or chips
const kind = () => kinds[$("product").value];
const placeOf = (properties) => properties.h3 ?? properties.chip; // a cell id or a chip reference
let chipGeometries = new Map(); // chip reference -> footprint, for the chips in view

// Rings across the antimeridian drawn whole (Polygons; MultiPolygons are already split there).
function drawable(geometry) {
  if (geometry.type === "Polygon") geometry.coordinates = geometry.coordinates.map(unwrapRing);
  return geometry;
}

let viewRequest = 0;
function refreshView() {
  return kind() === "chips" ? refreshChips() : refreshCells();
}

// Resolves once the map has nothing left to load or draw (at once when it is idle already).
function settled() {
  return new Promise((resolve) => (map.loaded() ? resolve() : map.once("idle", resolve)));
}

async function firstPaint(painted) {
  if (state.firstPaintMs !== null) return;
  state.firstPaintMs = await painted;
  await settled();
  mark("idle");
  state.ready = true;
}

async function refreshChips(fit = false) {
  const product = $("product").value;
  const request = ++viewRequest;
  try {
    const query = new URLSearchParams({ product });
    if (!fit) query.set("bbox", viewBbox());
    const data = await getJSON(`/api/map/chips?${query}`);
    if (request !== viewRequest) return;
    chipGeometries = new Map(data.features.map((f) => [f.properties.chip, drawable(f.geometry)]));
    const painted = drawn("chips");
    map.getSource("chips").setData(data);
    map.getSource("cells").setData(EMPTY);
    const shown = data.features.length, total = data.properties.chips_in_view;
    $("layer-status").textContent = `${shown.toLocaleString()} chips` +
      (shown < total ? ` of ${total.toLocaleString()} in view: zoom in for the rest` : "") +
      ` · model ${data.properties.model_version} · hover a chip for its thumbnail`;
    $("layer-status").classList.remove("error");
    if (fit && data.features.length) {
      const bounds = new maplibregl.LngLatBounds();
      for (const f of data.features) for (const ring of (f.geometry.type === "Polygon" ? [f.geometry.coordinates[0]] : f.geometry.coordinates.map((p) => p[0]))) for (const p of ring) bounds.extend(p);
      map.fitBounds(bounds, { padding: 40, duration: 0 });
    }
    await firstPaint(painted);
  } catch (error) {
    showError($("layer-status"), `map chips: ${error.message}`);
  }
}

async function refreshCells() {
  const product = $("product").value;
  if (!product) return;
  const request = ++viewRequest;
  try {
    const query = new URLSearchParams({ product, bbox: viewBbox() });
    const data = await getJSON(`/api/map/cells?${query}`);
    if (request !== viewRequest) return; // a newer view is on its way
    mark("cellsFetched");
    const features = data.cells.map((cell, i) => ({
      type: "Feature",
      geometry: hexagon(cell),
      properties: { h3: cell, colour: "#" + data.rgb.substr(i * 6, 6) },
    }));
    const painted = drawn("cells");
    map.getSource("cells").setData({ type: "FeatureCollection", features });
    map.getSource("chips").setData(EMPTY);
    mark("cellsSet");
    const own = data.resolution === data.product_resolution;
    $("layer-status").textContent =
      `${features.length.toLocaleString()} cells at H3 res ${data.resolution}` +
      (own ? " (the product's own)" : ` (means of ${data.cells_in_product.toLocaleString()} res-${data.product_resolution} cells: zoom in for them)`) +
      ` · model ${data.model_version}`;
    $("layer-status").classList.remove("error");
    await firstPaint(painted);
  } catch (error) {
    showError($("layer-status"), `map cells: ${error.message}`);
  }
}

function renderResults(collection) {
  const list = $("results");
  list.replaceChildren();
  for (const feature of collection.features) {
    const { rank, distance, lon, lat } = feature.properties;
    const item = document.createElement("li");
    item.textContent = `${placeOf(feature.properties)}  ${distance.toFixed(4)}`;
    item.title = `rank ${rank}: cosine distance ${distance}`;
    item.addEventListener("click", () => map.flyTo({ center: [lon, lat], zoom: Math.max(map.getZoom(), 5) }));
    list.appendChild(item);
  }
}

// Search by a chip reference (a chip clicked on an imagery product) or by the point clicked.
async function searchAt(lon, lat, chip = null) {
  const started = performance.now();
  const product = $("product").value;
  const k = Number($("k").value);
  const status = $("search-status");
  status.classList.remove("error");
  status.textContent = "searching…";
  const query = new URLSearchParams({ product, k: String(k) });
  if (chip) query.set("chip", chip);
  else { query.set("lon", lon.toFixed(6)); query.set("lat", lat.toFixed(6)); }
  const bbox = $("restrict").checked ? searchBbox() : null;
  if (bbox) query.set("bbox", bbox);
  let collection;
  try {
    collection = await getJSON(`/api/similar?${query}`);
  } catch (error) {
    showError(status, error.message);
    return;
  }
  const fetched = performance.now();
  for (const feature of collection.features) drawable(feature.geometry);
  state.lastResult = collection;
  const queryPlace = collection.properties.query;
  const highlighted = drawn("similar");
  map.getSource("similar").setData(collection);
  map.getSource("similar-points").setData({
    type: "FeatureCollection",
    features: collection.features.map((f) => ({
      type: "Feature", properties: f.properties, geometry: { type: "Point", coordinates: [f.properties.lon, f.properties.lat] },
    })),
  });
  const queryGeometry = kind() === "chips" ? chipGeometries.get(queryPlace) : hexagon(queryPlace);
  map.getSource("query").setData(queryGeometry ? { type: "Feature", geometry: queryGeometry, properties: {} } : EMPTY);
  renderResults(collection);
  $("download").disabled = collection.features.length === 0;
  const shown = await highlighted;
  await settled();
  const ms = shown - started;
  status.textContent = `${collection.features.length} places like ${queryPlace}` +
    (bbox ? " inside the view" : "") + ` (${collection.properties.plan}, ${ms.toFixed(0)} ms)`;
  state.clicks.push({ ms, fetchMs: fetched - started, idleMs: performance.now() - started, query: queryPlace,
                      places: collection.features.map((f) => placeOf(f.properties)) });
  showPlace(queryPlace);
}

// What the product holds for the query cell (status, class fractions, versions), under the search status.
async function showPlace(cell) {
  const box = $("place");
  box.replaceChildren();
  if (kind() !== "h3_cells") return;
  let details;
  try {
    details = await getJSON(`/api/cells/${cell}?${new URLSearchParams({ product: $("product").value })}`);
  } catch (error) {
    box.textContent = `cell ${cell}: ${error.message}`;
    return;
  }
  const lines = [["cell", details.cell], ["model", details.model_version], ["source", details.source_version]];
  if (details.status) lines.splice(1, 0, ["status", details.status], ["valid", `${(details.valid_fraction * 100).toFixed(0)} %`]);
  const table = document.createElement("table");
  const row = (label, value, bar) => {
    const tr = table.insertRow();
    tr.insertCell().textContent = label;
    const td = tr.insertCell();
    if (bar !== undefined) {
      const span = document.createElement("span");
      span.className = "bar";
      span.style.width = `${Math.round(bar * 80)}px`;
      td.append(span, ` ${(bar * 100).toFixed(0)} %`);
    } else td.textContent = value;
  };
  for (const [label, value] of lines) row(label, value);
  for (const [name, share] of Object.entries(details.class_fractions || {}).slice(0, 5)) row(name, null, share);
  box.appendChild(table);
}

function download() {
  const collection = state.lastResult;
  if (!collection) return;
  const blob = new Blob([JSON.stringify(collection)], { type: "application/geo+json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  const query = collection.properties.query.replaceAll("/", "_");
  link.download = `${$("product").value}_similar_to_${query}_k${collection.features.length}.geojson`;
  link.click();
  URL.revokeObjectURL(link.href);
}

async function loadProducts(request) {
  const select = $("product");
  const products = await request;
  for (const p of products) {
    if (p.product in kinds) continue; // newest model version first: the map shows that one
    kinds[p.product] = p.kind;
    select.add(new Option(p.kind === "chips" ? `${p.product} (chips)` : p.product, p.product));
  }
  if (!products.length) throw new Error("no product has been loaded into this database yet");
  if (params.get("product")) select.value = params.get("product");
}

function addLayers(countries) {
  map.addSource("countries", { type: "geojson", data: countries });
  map.addSource("cells", { type: "geojson", data: EMPTY, tolerance: 0 });
  map.addSource("chips", { type: "geojson", data: EMPTY, tolerance: 0 });
  map.addSource("similar", { type: "geojson", data: EMPTY });
  map.addSource("query", { type: "geojson", data: EMPTY });
  map.addSource("similar-points", { type: "geojson", data: EMPTY });
  map.addLayer({ id: "land", type: "fill", source: "countries", paint: { "fill-color": "#f6f5f0" } });
  map.addLayer({ id: "cells", type: "fill", source: "cells", paint: { "fill-color": ["get", "colour"], "fill-opacity": 0.9 } });
  map.addLayer({ id: "chips", type: "fill", source: "chips", paint: { "fill-color": ["get", "colour"], "fill-opacity": 0.75 } });
  map.addLayer({ id: "chips-line", type: "line", source: "chips", minzoom: 8, paint: { "line-color": "#333", "line-width": 0.4 } });
  map.addLayer({ id: "borders", type: "line", source: "countries", paint: { "line-color": "#555", "line-width": 0.6, "line-opacity": 0.7 } });
  map.addLayer({
    id: "similar-fill", type: "fill", source: "similar",
    paint: { "fill-color": "#00d5ff", "fill-opacity": ["interpolate", ["linear"], ["get", "rank"], 1, 0.55, 50, 0.2] },
  });
  map.addLayer({ id: "similar-line", type: "line", source: "similar", paint: { "line-color": "#00d5ff", "line-width": 2.5 } });
  map.addLayer({ id: "query-line", type: "line", source: "query", paint: { "line-color": "#000", "line-width": 3 } });
  // Dots keep the places visible when their hexagons are smaller than a pixel (zoomed out).
  map.addLayer({
    id: "similar-points", type: "circle", source: "similar-points", maxzoom: 6,
    paint: { "circle-radius": 4, "circle-color": "#00d5ff", "circle-stroke-color": "#000", "circle-stroke-width": 1 },
  });
}

async function start() {
  // Both requests travel while MapLibre sets itself up.
  const products = getJSON("/api/products");
  products.catch(() => {}); // reported by loadProducts
  const [topology] = await Promise.all([
    getJSON("/vendor/world-atlas/countries-110m.json"),
    new Promise((resolve) => map.on("load", resolve)),
  ]);
  mark("mapLoaded");
  const countries = topojson.feature(topology, topology.objects.countries);
  for (const feature of countries.features) continuousGeometry(feature.geometry);
  addLayers(countries);
  try {
    await loadProducts(products);
    mark("products");
  } catch (error) {
    showError($("layer-status"), error.message);
    return;
  }
  if (params.get("k")) $("k").value = params.get("k");
  if (kind() === "chips") await refreshChips(!params.get("lon"));
  else await refreshCells();

  let pending;
  map.on("moveend", () => { clearTimeout(pending); pending = setTimeout(refreshView, 120); });
  map.on("click", (event) => {
    if (dragged) return;
    const p = event.lngLat.wrap();
    const chip = kind() === "chips" ? map.queryRenderedFeatures(event.point, { layers: ["chips"] })[0] : null;
    searchAt(p.lng, p.lat, chip ? chip.properties.chip : null);
  });
  $("product").addEventListener("change", () => {
    for (const id of ["similar", "similar-points", "query"]) map.getSource(id).setData(EMPTY);
    $("results").replaceChildren();
    if (kind() === "chips") refreshChips(true);
    else refreshCells();
  });
  $("download").addEventListener("click", download);

  const popup = new maplibregl.Popup({ closeButton: false, closeOnClick: false });
  map.on("mousemove", ["similar-fill", "similar-points"], (event) => {
    const { rank, distance } = event.features[0].properties;
    const place = placeOf(event.features[0].properties);
    popup.setLngLat(event.lngLat).setHTML(`#${rank} ${place}<br>distance ${Number(distance).toFixed(4)}`).addTo(map);
  });
  map.on("mouseleave", ["similar-fill", "similar-points"], () => popup.remove());
  // A chip's thumbnail (the RGB picture the imagery pipeline saved) on hover.
  const thumbnail = new maplibregl.Popup({ closeButton: false, closeOnClick: false, offset: 12 });
  map.on("mousemove", "chips", (event) => {
    const chip = event.features[0].properties.chip;
    if (thumbnail.chip === chip) { thumbnail.setLngLat(event.lngLat); return; }
    thumbnail.chip = chip;
    const src = `/api/chips/thumbnail?${new URLSearchParams({ product: $("product").value, chip })}`;
    thumbnail.setLngLat(event.lngLat).setHTML(`<img class="thumbnail" src="${src}" alt="${chip}"><br>${chip}`).addTo(map);
  });
  map.on("mouseleave", "chips", () => { thumbnail.chip = null; thumbnail.remove(); });
}

start().catch((error) => showError($("layer-status"), error.message));
