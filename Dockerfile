# HaloTrack proxy image: slim, non-root, with a health check.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY halo_proxy ./halo_proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HALO_DATA_DIR=/var/lib/halo
RUN useradd --system --create-home --home-dir /var/lib/halo --uid 10001 halo
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/tenants.yaml /etc/halo/tenants.yaml
USER halo
WORKDIR /var/lib/halo
EXPOSE 8080 9102
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/_halo/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["halo-proxy"]
CMD ["serve", "--config", "/etc/halo/tenants.yaml", "--host", "0.0.0.0", "--port", "8080", "--metrics-port", "9102"]
