#!/usr/bin/env bash
# The main job: set everything up, then materialize the whole global H3 product (MODIS, res 4) on
# the embedded default (local files, Dagster's local instance). Extra arguments go to `geoembed run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
exec geoembed run "$@"
