#!/bin/bash
# /entrypoint of the stand-in Airflow image (docker/stand-ins/airflow.Dockerfile): the steps of the
# official image's entrypoint this project's images and docker-compose.yaml rely on, in its order.
set -euo pipefail
umask 0002
unset PIP_USER
max="${CONNECTION_CHECK_MAX_COUNT:-20}"
sleep_s="${CONNECTION_CHECK_SLEEP_TIME:-3}"
if [ "$max" -gt 0 ]; then
  n=0
  until airflow db check >/dev/null 2>&1; do
    n=$((n + 1))
    if [ "$n" -ge "$max" ]; then
      echo "ERROR! Maximum number of retries ($max) reached. Last check result:" >&2
      airflow db check >&2 || true
      exit 1
    fi
    sleep "$sleep_s"
  done
fi
if [ -n "${_AIRFLOW_DB_MIGRATE:-}" ]; then airflow db migrate || true; fi
case "${1:-}" in
  bash) shift; exec /bin/bash "$@" ;;
  python) shift; exec python "$@" ;;
  airflow) shift ;;
esac
exec airflow "$@"
