# The project's Airflow image: Airflow 3.3.2 with the pinned dependencies, the Celery executor's
# packages, the loyalty_moengage package, and dags/, plugins/, include/. Two targets:
#   production (the default, the last stage): the product only, no development tool; every Airflow
#              service of docker-compose.yaml runs it;
#   dev:       production plus devtools/ (loyalty-moengage-devtools: the MoEngage sandbox, the
#              synthetic data generator, docker/demo_init.py); the Compose demo's sandbox and generator.
#
#   docker build -t loyalty-moengage:local .
#   docker build --target dev -t loyalty-moengage-dev:local .
#   docker build --network host --build-arg BASE_IMAGE=<a Python 3.11 Debian image> \
#       --build-arg CA_BUNDLE=build-ca.crt -t loyalty-moengage:local .     # see README
#
# BASE_IMAGE: any Debian-based image with python3.11 and the venv module (the official slim image,
# or one made from Debian packages by docker/base-image.sh where no image registry is reachable).
# CA_BUNDLE: a file name under docker/certs/, trusted by pip during the build only (TLS-inspecting
# proxies); the runtime image keeps the base image's CA store.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE} AS product

ARG CA_BUNDLE=""
ARG AIRFLOW_UID=50000
ENV AIRFLOW_HOME=/opt/airflow \
    LOYALTY_PROJECT_ROOT=/opt/airflow \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    LANG=C.UTF-8

# The airflow user as in Airflow's image: uid 50000, group 0 (so `user: "<uid>:0"` works).
RUN useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir /opt/airflow --no-create-home --shell /bin/bash airflow \
 && mkdir -p /opt/airflow /opt/venv && chown -R "${AIRFLOW_UID}:0" /opt/airflow /opt/venv

COPY docker/certs/ /tmp/build-certs/
# Dependencies first: this layer is rebuilt only when the pins change.
COPY requirements.txt constraints.txt /tmp/pins/
COPY docker/requirements-celery.txt /tmp/pins/
RUN set -eu; \
    if [ -n "${CA_BUNDLE}" ]; then export PIP_CERT="/tmp/build-certs/${CA_BUNDLE}"; test -s "$PIP_CERT"; fi; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'; \
    python3 -m venv /opt/venv; \
    pip install -q -r /tmp/pins/requirements.txt -r /tmp/pins/requirements-celery.txt -c /tmp/pins/constraints.txt; \
    chown -R "${AIRFLOW_UID}:0" /opt/venv

WORKDIR /opt/airflow
COPY --chown=${AIRFLOW_UID}:0 pyproject.toml ./
COPY --chown=${AIRFLOW_UID}:0 plugins/ ./plugins/
RUN set -eu; \
    if [ -n "${CA_BUNDLE}" ]; then export PIP_CERT="/tmp/build-certs/${CA_BUNDLE}"; fi; \
    pip install -q --no-deps -e .; \
    rm -rf /tmp/build-certs /tmp/pins; \
    chown -R "${AIRFLOW_UID}:0" /opt/airflow/plugins
COPY --chown=${AIRFLOW_UID}:0 dags/ ./dags/
COPY --chown=${AIRFLOW_UID}:0 include/ ./include/
COPY --chown=${AIRFLOW_UID}:0 docker/entrypoint.sh docker/programs.compose-test.yaml ./docker/

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/airflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER ${AIRFLOW_UID}:0
RUN python -c "import airflow, loyalty_moengage, airflow.providers.celery; print('airflow', airflow.__version__)"
ENTRYPOINT ["/opt/airflow/docker/entrypoint.sh"]
CMD ["version"]

# ---- dev: the product image plus the development tools (never in the production image) ----
FROM product AS dev
ARG CA_BUNDLE=""
ARG AIRFLOW_UID=50000
USER root
COPY docker/certs/ /tmp/build-certs/
COPY --chown=${AIRFLOW_UID}:0 devtools/ ./devtools/
COPY --chown=${AIRFLOW_UID}:0 docker/demo_init.py ./docker/
RUN set -eu; \
    if [ -n "${CA_BUNDLE}" ]; then export PIP_CERT="/tmp/build-certs/${CA_BUNDLE}"; test -s "$PIP_CERT"; fi; \
    pip install -q --no-deps -e ./devtools; \
    rm -rf /tmp/build-certs; \
    chown -R "${AIRFLOW_UID}:0" /opt/airflow/devtools
USER ${AIRFLOW_UID}:0
RUN python -c "import loyalty_moengage_devtools.cli, loyalty_moengage_devtools.sandbox.server, loyalty_moengage_devtools.generator"

# ---- production, the default target (the last stage): the product stage as it is ----
FROM product AS production
