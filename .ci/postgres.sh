#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the tests in tests/feedback (marker `postgres`).
#
#   eval "$(.ci/postgres.sh)"      # sets TILLER_TEST_PG_URL
#   pytest tests/feedback -q
#
# Installs Debian's `postgresql` if missing, starts the packaged cluster with pg_ctlcluster (the server
# runs as the `postgres` user, so this is safe to run as root), creates a role and a database, and prints
# ONE line on stdout: the export of TILLER_TEST_PG_URL. Everything else goes to stderr.
# Environment: PGPORT (default: the cluster's port, 5432 or the next free one when the cluster is made),
# TILLER_PG_USER / TILLER_PG_PASSWORD (default tiller) / TILLER_PG_DB (default tiller_test),
# TILLER_PG_CLUSTER (default tiller).
set -euo pipefail
DB_USER="${TILLER_PG_USER:-tiller}"
DB_PASS="${TILLER_PG_PASSWORD:-tiller}"
DB_NAME="${TILLER_PG_DB:-tiller_test}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >&2
  $SUDO apt-get install -y -q --no-install-recommends postgresql >&2
fi

VERSION="$(ls /usr/lib/postgresql | sort -V | tail -1)"
CLUSTER="${TILLER_PG_CLUSTER:-tiller}"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION $CLUSTER"; then
  # A cluster of our own: does not disturb a `main` cluster the machine may already run; without -p,
  # pg_createcluster takes the first free port from 5432 up.
  $SUDO pg_createcluster "$VERSION" "$CLUSTER" ${PGPORT:+-p "$PGPORT"} -- --auth-local=peer --auth-host=scram-sha-256 >&2
fi
CONF="/etc/postgresql/$VERSION/$CLUSTER/postgresql.conf"
$SUDO sed -i -E "s/^#?listen_addresses *=.*/listen_addresses = '127.0.0.1'/" "$CONF"
if [ -n "${PGPORT:-}" ]; then $SUDO sed -i -E "s/^#?port *=.*/port = $PGPORT/" "$CONF"; fi
PORT="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $3}')"
if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
  $SUDO pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi

for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p "$PORT" -q && break
  sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$PORT" >&2

psql_admin() { $SUDO -u postgres psql -p "$PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ -z "$SUDO" ]; then psql_admin() { su postgres -c "psql -p $PORT -v ON_ERROR_STOP=1 -qtA $(printf '%q ' "$@")"; }; fi

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$DB_USER'")" != "1" ]; then
  psql_admin -c "CREATE ROLE \"$DB_USER\" LOGIN PASSWORD '$DB_PASS' CREATEDB" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE \"$DB_NAME\" OWNER \"$DB_USER\"" >&2
fi
echo "export TILLER_TEST_PG_URL=postgresql+psycopg://$DB_USER:$DB_PASS@127.0.0.1:$PORT/$DB_NAME"
