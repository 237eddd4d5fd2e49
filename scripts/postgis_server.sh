#!/usr/bin/env bash
# A real PostgreSQL 17 with pgvector and PostGIS for tests of the PostGIS path, run from a Debian
# trixie root made with debootstrap (bookworm, these machines' Debian, has no pgvector package).
#
#   bash scripts/postgis_server.sh start   # provision once (~3 min), then start on 127.0.0.1:$PORT
#   bash scripts/postgis_server.sh stop
#   bash scripts/postgis_server.sh status  # exit 0 if running
#   bash scripts/postgis_server.sh dsn     # print the DSN (for GEOEMBED_TEST_POSTGIS_DSN)
#
# Needs root (debootstrap, chroot). The root lives outside the checkout (default
# /var/tmp/geoembed-postgis/root, ~1 GB), so that no `git clean` ever walks into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=${POSTGIS_ROOT:-/var/tmp/geoembed-postgis/root}
PORT=${POSTGIS_PORT:-55432}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PGBIN=/usr/lib/postgresql/17/bin
DATA=/var/lib/geoembed-pg

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

provision() {
  # Checked inside the root: some of its files are absolute symlinks (/etc/alternatives).
  [[ -x "$ROOT$PGBIN/postgres" ]] && in_root test -f /usr/share/postgresql/17/extension/vector.control \
    && in_root test -f /usr/share/postgresql/17/extension/postgis.control && return 0
  if ! command -v debootstrap >/dev/null; then
    echo "[postgis] installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  echo "[postgis] debootstrap trixie with postgresql-17, pgvector and postgis into $ROOT (a few minutes)"
  mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include=postgresql-17,postgresql-17-pgvector,postgresql-17-postgis-3 \
    trixie "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 || { tail -20 "$ROOT.debootstrap.log"; exit 1; }
}

start() {
  provision
  # debootstrap made the device nodes PostgreSQL needs; /proc is the one mount it wants.
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  if [[ ! -f "$ROOT$DATA/PG_VERSION" ]]; then
    in_root mkdir -p "$DATA" /run/postgresql
    in_root chown postgres:postgres "$DATA" /run/postgresql
    in_root su postgres -s /bin/sh -c "$PGBIN/initdb -D $DATA -U postgres --auth=trust -E UTF8 >/dev/null"
  fi
  if in_root su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $DATA status" >/dev/null 2>&1; then
    echo "[postgis] already running on 127.0.0.1:$PORT"
  else
    in_root mkdir -p /run/postgresql && in_root chown postgres:postgres /run/postgresql
    in_root su postgres -s /bin/sh -c \
      "$PGBIN/pg_ctl -D $DATA -l $DATA/server.log -w -o '-c listen_addresses=127.0.0.1 -p $PORT' start >/dev/null"
    echo "[postgis] started on 127.0.0.1:$PORT"
  fi
}

stop() {
  [[ -d "$ROOT" ]] || return 0
  in_root su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $DATA -m fast stop" >/dev/null 2>&1 || true
  mountpoint -q "$ROOT/proc" && umount "$ROOT/proc" || true
}

status() {
  [[ -x "$ROOT$PGBIN/pg_ctl" ]] && in_root su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $DATA status" >/dev/null 2>&1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  dsn) echo "postgresql://postgres@127.0.0.1:$PORT/postgres" ;;
  *) echo "usage: $0 start|stop|status|dsn" >&2; exit 2 ;;
esac
