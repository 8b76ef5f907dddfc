# syntax=docker/dockerfile:1
# Build stage: the same install step the Makefile uses (make install-runtime).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile pyproject.toml README.md ./
COPY protos protos
COPY generated generated
COPY server server
COPY clients clients
RUN make install-runtime VENV=/opt/apikeys

# Runtime stage: the installed service only, as a non-root user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/apikeys --create-home apikeys
COPY --from=build /opt/apikeys /opt/apikeys
ENV PATH="/opt/apikeys/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    APIKEYS_LISTEN=0.0.0.0:50051 \
    APIKEYS_DATA_DIR=/var/lib/apikeys
USER apikeys
WORKDIR /var/lib/apikeys
EXPOSE 50051
# Authorize, not KeyAdmin: during a database outage the container still
# answers checks from its cache, and restarting it would only empty that.
# A load balancer in front of KeyAdmin asks for voiso.apikeys.v1.KeyAdmin.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["apikeys-server", "health", "--listen", "127.0.0.1:50051", \
         "--service", "voiso.apikeys.v1.Authorize"]
ENTRYPOINT ["apikeys-server"]
