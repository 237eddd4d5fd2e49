#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit + integration on real data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
exec python -m pytest "$@"
