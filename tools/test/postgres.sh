#!/usr/bin/env bash
# Starts a private PostgreSQL server for the tests (installing Debian's package when the
# machine has none) and prints its URL. Idempotent: a server this script already started is
# reused. Stop it with `tools/test/postgres.sh stop`.
#
# The cluster lives in $SKYREELS_PG_DIR (default /tmp/skyreels-test-pg), listens on 127.0.0.1
# at $SKYREELS_PG_PORT (default 55432) with trust authentication, and is owned by the
# `postgres` user when this runs as root (PostgreSQL refuses to run as root).
set -euo pipefail

dir="${SKYREELS_PG_DIR:-/tmp/skyreels-test-pg}"
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
port="${SKYREELS_PG_PORT:-55432}"
url="postgres://postgres@127.0.0.1:${port}/postgres"

find_bin() {
  local name="$1" found
  found="$(command -v "$name" 2>/dev/null || true)"
  if [ -z "$found" ]; then
    found="$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  echo "$found"
}

install_postgres() {
  if [ "$(id -u)" != 0 ]; then
    echo "postgres.sh: PostgreSQL is not installed; run as root or: sudo apt-get install -y postgresql" >&2
    exit 1
  fi
  echo "postgres.sh: installing PostgreSQL (Debian package)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends postgresql >&2
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    # From /, which the postgres user can enter (it may not enter the caller's folder).
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

initdb="$(find_bin initdb)"
if [ -z "$initdb" ]; then
  install_postgres
  initdb="$(find_bin initdb)"
fi
bindir="$(dirname "$initdb")"

if [ "${1:-start}" = stop ]; then
  [ -d "$dir/data" ] && as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
  exit 0
fi

if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir "$dir" --shell /bin/sh postgres
fi

if [ ! -f "$dir/data/PG_VERSION" ]; then
  echo "postgres.sh: creating a test cluster in $dir" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 >/dev/null
fi

if ! as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  echo "postgres.sh: starting PostgreSQL on 127.0.0.1:$port" >&2
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2
fi
echo "$url"
