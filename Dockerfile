# The project's Airflow image: Airflow's own image with the loyalty-moengage wheel installed, as
# docs/install.md tells a platform team to do (FROM apache/airflow, pip install the wheel with the
# constraints, copy dags/, include/ and the plugin file). Three stages:
#   wheel:      builds the product's wheel from pyproject.toml and plugins/ (nothing else ships);
#   production: the default (the last stage): the Airflow image + the wheel [openlineage] + dags/,
#               include/, plugins/moengage_api_plugin.py; every Airflow service of docker-compose.yaml;
#   dev:        production plus devtools/ (loyalty-moengage-devtools: the MoEngage sandbox, the
#               synthetic data generator, docker/demo_init.py); the Compose demo's sandbox and generator.
#
#   docker build -t loyalty-moengage:local .
#   docker build --target dev -t loyalty-moengage-dev:local .
#   docker build --network host --build-arg AIRFLOW_IMAGE=loyalty-moengage/airflow:3.3.2-python3.11-standin \
#       --build-arg CA_BUNDLE=build-ca.crt -t loyalty-moengage:local .     # no registry: docs/compose.md
#
# AIRFLOW_IMAGE: apache/airflow for Airflow 3.3.2 on Python 3.11, or an image of the same shape
# (docker/stand-ins/airflow.Dockerfile builds one where no image registry is reachable).
# CONSTRAINTS: the pins the wheel is installed with; the project's tested set by default. With
# the official image, Airflow's own constraints file for its version works as well (docs/install.md).
# CA_BUNDLE: a file name under docker/certs/, trusted by pip during the build only (TLS-inspecting
# proxies); the runtime image keeps the base image's CA store.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

FROM ${AIRFLOW_IMAGE} AS wheel
ARG CA_BUNDLE=""
COPY --chown=airflow:0 docker/certs/ /tmp/build-certs/
COPY --chown=airflow:0 pyproject.toml /tmp/src/
COPY --chown=airflow:0 plugins/ /tmp/src/plugins/
RUN set -eu; \
    if [ -n "${CA_BUNDLE}" ]; then export PIP_CERT="/tmp/build-certs/${CA_BUNDLE}"; test -s "$PIP_CERT"; fi; \
    pip wheel -q --no-cache-dir --no-deps -w /tmp/dist /tmp/src

FROM ${AIRFLOW_IMAGE} AS product
ARG CA_BUNDLE=""
ARG CONSTRAINTS=constraints.txt
COPY --chown=airflow:0 docker/certs/ /tmp/build-certs/
COPY --chown=airflow:0 ${CONSTRAINTS} /tmp/pins/constraints.txt
COPY --chown=airflow:0 --from=wheel /tmp/dist/ /tmp/dist/
# `apache-airflow==${AIRFLOW_VERSION}` keeps pip from moving the image's Airflow, as Airflow's docs ask.
RUN set -eu; \
    if [ -n "${CA_BUNDLE}" ]; then export PIP_CERT="/tmp/build-certs/${CA_BUNDLE}"; test -s "$PIP_CERT"; fi; \
    wheel="$(ls /tmp/dist/loyalty_moengage-*.whl)"; \
    pip install -q --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "${wheel}[openlineage]" \
      --constraint /tmp/pins/constraints.txt; \
    rm -rf /tmp/dist /tmp/pins /tmp/build-certs
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 plugins/moengage_api_plugin.py /opt/airflow/plugins/
COPY --chown=airflow:0 docker/entrypoint.sh docker/programs.compose-test.yaml /opt/airflow/docker/
ENV LOYALTY_PROJECT_ROOT=/opt/airflow \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
RUN python -c "import airflow, loyalty_moengage.sync.tasks, loyalty_moengage.api.app, airflow.providers.celery; print('airflow', airflow.__version__)"
# The image's own /entrypoint runs the command; ours first writes the Simple auth manager's
# password file from _AIRFLOW_WWW_USER_USERNAME/_PASSWORD (docker/entrypoint.sh).
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/airflow/docker/entrypoint.sh"]
CMD ["version"]

# ---- dev: the product image plus the development tools (never in the production image) ----
FROM product AS dev
ARG CA_BUNDLE=""
COPY --chown=airflow:0 docker/certs/ /tmp/build-certs/
COPY --chown=airflow:0 requirements.txt constraints.txt /tmp/pins/
COPY --chown=airflow:0 devtools/ /opt/airflow/devtools/
COPY --chown=airflow:0 docker/demo_init.py /opt/airflow/docker/
RUN set -eu; \
    if [ -n "${CA_BUNDLE}" ]; then export PIP_CERT="/tmp/build-certs/${CA_BUNDLE}"; test -s "$PIP_CERT"; fi; \
    pip install -q --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /tmp/pins/requirements.txt \
      -c /tmp/pins/constraints.txt; \
    pip install -q --no-cache-dir --no-deps /opt/airflow/devtools; \
    rm -rf /tmp/build-certs /tmp/pins
RUN python -c "import loyalty_moengage_devtools.cli, loyalty_moengage_devtools.sandbox.server, loyalty_moengage_devtools.generator"

# ---- production, the default target (the last stage): the product stage as it is ----
FROM product AS production
