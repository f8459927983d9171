# A stand-in for the official `postgres:16` image, built from Debian's packages, for machines that
# reach Debian's archive but no image registry (make compose-test builds it when `postgres:16`
# cannot be had). It honours what docker-compose.yaml uses of the official image: POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, /docker-entrypoint-initdb.d/*.sql|*.sh on first start, PGDATA
# at /var/lib/postgresql/data, and pg_isready for the health check. Debian bookworm ships 15.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 \
 && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY stand-ins/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
