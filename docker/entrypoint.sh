#!/bin/bash
# Entrypoint of the project's image: prepares what the Simple auth manager needs, then hands the
# command to the Airflow image's own /entrypoint (which waits for the metadata database, then runs
# `scheduler` as `airflow scheduler`, and bash and python as they are).
# When _AIRFLOW_WWW_USER_USERNAME/_PASSWORD are set (the API server), the Simple auth manager's
# passwords file gets that user and password, so the UI login and the REST API's token
# (POST /auth/token) use a known password instead of one generated into the log.
set -euo pipefail
if [ -n "${_AIRFLOW_WWW_USER_USERNAME:-}" ] && [ -n "${_AIRFLOW_WWW_USER_PASSWORD:-}" ]; then
  python - <<'PY'
import json, os
path = os.environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE") or os.path.join(
    os.environ.get("AIRFLOW_HOME", "/opt/airflow"), "simple_auth_manager_passwords.json.generated")
with open(path, "w") as f:
    json.dump({os.environ["_AIRFLOW_WWW_USER_USERNAME"]: os.environ["_AIRFLOW_WWW_USER_PASSWORD"]}, f)
os.chmod(path, 0o600)
PY
fi
exec /entrypoint "$@"
