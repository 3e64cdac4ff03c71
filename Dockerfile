# HaloTrack proxy image: slim, non-root, configured from outside (deploy/README.md):
# - the tenant file mounted at /etc/halo/tenants.yaml (or HALO_CONFIG pointing elsewhere);
# - HALO_SECRET_KEY, or HALO_SECRET_KEY_FILE naming a mounted secret; the same for HALO_DATABASE_URL and for
#   the tenant file's ${VAR}s (VAR_FILE);
# - without HALO_DATABASE_URL the embedded PostgreSQL keeps its data in the volume /var/lib/halo.
# Ports and the reserved prefix are read by the health check as the proxy reads them: set HALO_PORT and friends
# rather than passing --port to serve.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY halo_proxy ./halo_proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    HALO_DATA_DIR=/var/lib/halo \
    HALO_CONFIG=/etc/halo/tenants.yaml \
    HALO_HOST=0.0.0.0 \
    HALO_PORT=8080 \
    HALO_METRICS_PORT=9102
RUN useradd --system --user-group --create-home --home-dir /var/lib/halo --uid 10001 halo \
    && mkdir -p /etc/halo
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/halo
VOLUME ["/var/lib/halo"]
EXPOSE 8080 9102
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["halo-proxy", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["halo-proxy"]
CMD ["serve"]
