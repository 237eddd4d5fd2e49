#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit + integration on real data and real servers).
# As root it also provisions and starts a PostgreSQL with pgvector + PostGIS (scripts/postgis_server.sh)
# for the PostGIS tests, and stops it afterwards if it started it; without root those tests skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
# Debian's chromium for the browser tests (installed as root when missing; otherwise they skip).
bash scripts/browser.sh || echo "[test] chromium unavailable: tests/test_ui_browser.py will skip"

started_postgis=""
if [[ $(id -u) -eq 0 && -z "${GEOEMBED_TEST_POSTGIS_DSN:-}" && "${GEOEMBED_SKIP_POSTGIS:-}" != 1 ]]; then
  if ! bash scripts/postgis_server.sh status >/dev/null 2>&1; then
    started_postgis=1
  fi
  for attempt in 1 2; do
    bash scripts/postgis_server.sh start && break
    [[ $attempt -eq 2 ]] && { echo "[test] could not provision the PostGIS server" >&2; exit 1; }
    echo "[test] retrying the PostGIS server"
  done
  export GEOEMBED_TEST_POSTGIS_DSN="$(bash scripts/postgis_server.sh dsn)"
  [[ -n $started_postgis ]] && trap 'bash scripts/postgis_server.sh stop' EXIT
fi
python -m pytest "$@"
