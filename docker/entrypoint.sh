#!/bin/bash
# Entrypoint of the project's image, in the spirit of Airflow's own (/entrypoint):
# - `docker run IMAGE scheduler` runs `airflow scheduler` (the first argument is an Airflow
#   command unless it is bash, sh, python, airflow or a path), so docker-compose.yaml reads like Airflow's;
# - when _AIRFLOW_WWW_USER_USERNAME/_PASSWORD are set (the API server), the Simple auth manager's
#   passwords file gets that user and password, so the UI login and the REST API's token
#   (POST /auth/token) use a known password instead of one generated into the log.
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
if [ $# -eq 0 ]; then set -- version; fi
# As Airflow's entrypoint: bash, python and paths run as they are; anything else is an Airflow
# command (`celery worker` is `airflow celery worker`, not the bare celery CLI).
case "$1" in
  bash|sh|python|python3|airflow|*/*) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
