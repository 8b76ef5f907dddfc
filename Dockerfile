# syntax=docker/dockerfile:1
# The base is any Debian-like image with python3 and its venv module: where a
# registry is reachable the default does; `make image` passes one it makes
# from Debian packages instead, so that no registry is needed.
ARG BASE=python:3.11-slim

# Build stage: the service and its dependencies installed into one venv, which
# is all the runtime stage takes. Every dependency ships as a wheel, so no
# compiler is needed here either.
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY generated generated
COPY server server
COPY clients clients
# pip trusts the system's CA bundle, which a build behind a TLS-inspecting
# proxy replaces with the host's (`make image` mounts it for the build only).
# xds-protos carries an older copy of OpenTelemetry's protos over
# opentelemetry-proto's own, so the latter is put back last.
RUN python3 -m venv /opt/apikeys \
    && export PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    && /opt/apikeys/bin/pip install --quiet --no-cache-dir --disable-pip-version-check . \
    && /opt/apikeys/bin/pip install --quiet --no-cache-dir --disable-pip-version-check \
       --no-deps --force-reinstall "opentelemetry-proto==$(/opt/apikeys/bin/python -c \
       'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && /opt/apikeys/bin/pip uninstall --quiet --yes pip setuptools

# Runtime stage: the installed service only, as a non-root user.
FROM ${BASE}
RUN useradd --uid 10001 --user-group --shell /usr/sbin/nologin --home-dir /var/lib/apikeys --create-home apikeys
COPY --from=build /opt/apikeys /opt/apikeys
ENV PATH="/opt/apikeys/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    APIKEYS_LISTEN=0.0.0.0:50051 \
    APIKEYS_DATA_DIR=/var/lib/apikeys
# Numeric, so that an orchestrator's runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/apikeys
EXPOSE 50051
# Authorize, not KeyAdmin: during a database outage the container still
# answers checks from its cache, and restarting it would only empty that.
# A load balancer in front of KeyAdmin asks for voiso.apikeys.v1.KeyAdmin.
# The probe reads the server's own APIKEYS_* settings (listen address, TLS),
# so it follows them when they are changed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["apikeys-server", "health", "--service", "voiso.apikeys.v1.Authorize"]
ENTRYPOINT ["apikeys-server"]
