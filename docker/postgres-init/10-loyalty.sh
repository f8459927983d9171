#!/bin/bash
# First start of the Compose Postgres: the demo's loyalty database (which also holds the sync's
# moengage_sync state schema), owned by its own role. Sourced by the postgres image's entrypoint.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -q \
  -v role="${LOYALTY_DB_USER:-loyalty}" -v pw="${LOYALTY_DB_PASSWORD:-loyalty}" -v db="${LOYALTY_DB_NAME:-loyalty}" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"role";
SQL
