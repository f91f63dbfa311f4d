# trackrelay container image.
#
# Two stages on the same base: "build" makes a virtualenv in /opt/trackrelay with trackrelay and
# its dependencies (binary wheels from PyPI, no compiler), the final stage copies only that venv
# onto a clean base. BASE may be the official image (python:3.11-slim-bookworm, the default) or
# any Debian bookworm image with python3 (the tests here build on one made with debootstrap):
# the venv is built by the base's own python3 and copied to the same path, so it runs on either.
#
#   docker build -t trackrelay .            buildah bud --format docker -t trackrelay .
#   docker run -p 8088:8088 -v trackrelay-data:/data -e WEB_WRITE_KEY=... trackrelay
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# A CA bundle for pip behind a TLS-intercepting proxy, mounted for the build only, e.g.
#   buildah bud -v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt:ro --build-arg BUILD_CA_BUNDLE=/run/build-ca.crt
ARG BUILD_CA_BUNDLE=
SHELL ["/bin/sh", "-eu", "-c"]
# Debian's python3 comes without the venv module; the official image has it.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
      apt-get update; \
      apt-get install -y --no-install-recommends python3-venv; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/trackrelay
COPY pyproject.toml README.md /src/
COPY proxy /src/proxy
COPY destinations /src/destinations
COPY deploy/image/probe.py /src/probe.py
# pip and setuptools are needed only here: they leave the venv before it is copied.
# hadolint ignore=DL3013
RUN if [ -n "$BUILD_CA_BUNDLE" ]; then export PIP_CERT="$BUILD_CA_BUNDLE"; fi; \
    /opt/trackrelay/bin/pip install --no-cache-dir --disable-pip-version-check /src; \
    /opt/trackrelay/bin/pip uninstall -y --disable-pip-version-check pip setuptools; \
    { echo '#!/opt/trackrelay/bin/python'; cat /src/probe.py; } > /opt/trackrelay/bin/trackrelay-probe; \
    chmod 0755 /opt/trackrelay/bin/trackrelay-probe; \
    /opt/trackrelay/bin/trackrelay --help > /dev/null

FROM ${BASE}
SHELL ["/bin/sh", "-eu", "-c"]
# HTTPS delivery needs CA certificates (the official image has them, a bare Debian base may not).
# A fixed uid/gid so a volume's ownership is predictable (Kubernetes fsGroup, chown on the host).
# hadolint ignore=DL3008
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends ca-certificates; \
      rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi; \
    groupadd --system --gid 10001 trackrelay; \
    useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin trackrelay; \
    mkdir -p /data /etc/trackrelay; \
    chown 10001:10001 /data
COPY --from=build /opt/trackrelay /opt/trackrelay
COPY deploy/image/trackrelay.yaml /etc/trackrelay/trackrelay.yaml

ENV PATH=/opt/trackrelay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRACKRELAY_PORT=8088
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8088
# trackrelay is PID 1 (exec form, no shell in between): it installs its own SIGTERM/SIGINT
# handlers (a PID 1 without handlers would ignore SIGTERM), stops accepting, drains in-flight
# work within server.shutdown_grace and exits 0. Orchestrators must wait longer than that grace.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["trackrelay-probe", "/healthz"]
ENTRYPOINT ["trackrelay"]
CMD ["serve", "--config", "/etc/trackrelay/trackrelay.yaml"]
