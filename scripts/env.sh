# Source this file: the environment the project's commands run in (a local Dagster instance and data folder).
_geoembed_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DAGSTER_HOME="${DAGSTER_HOME:-$_geoembed_root/.dagster}"
export GEOEMBED_DATA_DIR="${GEOEMBED_DATA_DIR:-$_geoembed_root/data}"
mkdir -p "$DAGSTER_HOME" "$GEOEMBED_DATA_DIR"
cp "$_geoembed_root/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
export PATH="$_geoembed_root/.venv/bin:$PATH"
unset _geoembed_root
