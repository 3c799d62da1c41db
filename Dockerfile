# syntax=docker/dockerfile:1
# job-watcher container image (SPEC §10). Build and run, see docs/operations/container.md:
#   docker build -t job-watcher:0.1.0 .
#   docker run --rm -v "$PWD/watcher.toml:/etc/job-watcher/watcher.toml:ro" -v job-watcher:/var/lib/job-watcher job-watcher:0.1.0
#
# The base image is pinned to a Python patch release on Debian bookworm; bump it deliberately (and pin it by
# digest, python:3.11.13-slim-bookworm@sha256:..., where your registry policy asks for it).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# -- build: the job-watcher wheel and the wheels of its dependencies, installed into a venv -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel needs (.dockerignore keeps the context to these).
COPY pyproject.toml README.md ./
COPY watcher ./watcher
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/job-watcher \
 && /opt/job-watcher/bin/pip install --no-index --find-links /wheels job-watcher \
 && /opt/job-watcher/bin/pip uninstall --yes pip setuptools \
 && /opt/job-watcher/bin/watcher --version

# -- runtime: the venv on the same base, a non-root user, nothing else -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="job-watcher" \
      org.opencontainers.image.description="Watches Oration jobs until they finish and delivers signed webhooks" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 watcher \
 && useradd --system --uid 10001 --gid watcher --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin watcher \
 && install -d -o watcher -g watcher -m 0700 /var/lib/job-watcher \
 && install -d -m 0755 /etc/job-watcher
COPY --from=build /opt/job-watcher /opt/job-watcher
# CONFIGURATION_DIRECTORY and STATE_DIRECTORY are defaults, not overrides: the config file is
# /etc/job-watcher/watcher.toml unless -c or WATCHER_CONFIG names another, and the SQLite file lives in
# /var/lib/job-watcher unless [daemon] state_dir or [store] url say otherwise.
ENV PATH=/opt/job-watcher/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONFIGURATION_DIRECTORY=/etc/job-watcher \
    STATE_DIRECTORY=/var/lib/job-watcher
USER 10001:10001
WORKDIR /var/lib/job-watcher
VOLUME ["/var/lib/job-watcher"]
EXPOSE 8080
# SIGTERM: stop claiming polls, drain for [daemon] shutdown_grace_s, exit 0 (give `docker stop -t` more).
STOPSIGNAL SIGTERM
# Slim images have no curl: the standard library checks /healthz. Set JOB_WATCHER_HEALTHCHECK_URL when
# [api] listen is not 127.0.0.1:8080.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('JOB_WATCHER_HEALTHCHECK_URL', 'http://127.0.0.1:8080/healthz'), timeout=4)"]
ENTRYPOINT ["watcher", "run"]
