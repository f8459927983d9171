# A stand-in for the official `apache/airflow:3.3.2-python3.11` image, for machines that reach PyPI
# and Debian's archive but no image registry (make compose-test builds it when the official image
# cannot be pulled). It has the official image's shape, which is all the project's Dockerfile relies
# on: Airflow 3.3.2 with the providers an Airflow image ships for this stack (celery, postgres, http,
# redis, standard), installed by pip in the airflow user's environment (/home/airflow/.local, on PATH);
# AIRFLOW_HOME=/opt/airflow, AIRFLOW_VERSION set; user airflow (uid 50000, group 0) by default;
# pip usable by that user (so `RUN pip install ...` extends it, as the official image's docs show);
# and the entrypoint `/usr/bin/dumb-init -- /entrypoint`, whose /entrypoint runs an Airflow command
# (`scheduler` is `airflow scheduler`; bash and python run as they are) after waiting for the
# metadata database (CONNECTION_CHECK_MAX_COUNT, default 20; 0 skips it) and migrating it when
# _AIRFLOW_DB_MIGRATE=true, as the official one does.
#   docker build --network host --build-arg BASE_IMAGE=<Debian bookworm with python3.11> \
#       [--build-arg CA_BUNDLE=build-ca.crt] -f docker/stand-ins/airflow.Dockerfile \
#       -t loyalty-moengage/airflow:3.3.2-python3.11-standin .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG CA_BUNDLE=""
ARG AIRFLOW_UID=50000
ENV AIRFLOW_VERSION=3.3.2 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW_USER_HOME_DIR=/home/airflow \
    PATH=/home/airflow/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      dumb-init python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow \
 && mkdir -p /opt/airflow/dags /opt/airflow/logs /opt/airflow/plugins \
 && chown -R "${AIRFLOW_UID}:0" /opt/airflow /home/airflow && chmod -R g+rwX /opt/airflow /home/airflow
COPY docker/certs/ /tmp/build-certs/
COPY constraints.txt docker/requirements-celery.txt /tmp/pins/
USER ${AIRFLOW_UID}:0
RUN set -eu; \
    if [ -n "${CA_BUNDLE}" ]; then export PIP_CERT="/tmp/build-certs/${CA_BUNDLE}"; test -s "$PIP_CERT"; fi; \
    python3 -m venv /home/airflow/.local; \
    pip install -q --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
      apache-airflow-providers-postgres apache-airflow-providers-http apache-airflow-providers-standard \
      -r /tmp/pins/requirements-celery.txt -c /tmp/pins/constraints.txt; \
    python -c "import airflow, airflow.providers.celery, airflow.providers.postgres; print('airflow', airflow.__version__)"
USER root
COPY docker/stand-ins/airflow-entrypoint.sh /entrypoint
RUN chmod 0755 /entrypoint && rm -rf /tmp/build-certs /tmp/pins
USER ${AIRFLOW_UID}:0
WORKDIR /opt/airflow
EXPOSE 8080
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]
CMD []
