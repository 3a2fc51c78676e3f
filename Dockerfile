# syntax=docker/dockerfile:1
# One image for every process of a dataops-lab deployment (deploy/README.md):
#   dataops-lab serve                         the REST + WebSocket API, the dashboard under /dashboard (default command)
#   dataops-lab dashboard                     the review dashboard on its own port
#   dataops-lab storage init | check          provisioning, run once per deployment and upgrade
#   dask scheduler / dask worker ADDRESS      the Dask cluster that runs batch notebooks
# Settings come from DATAOPS_<SECTION>__<KEY> variables, secrets from files named by DATAOPS_<SECTION>__<KEY>_FILE.
ARG PYTHON_VERSION=3.11

# ---- build: compilers may be needed for a package without a wheel; none of this stage reaches the final image
FROM python:${PYTHON_VERSION}-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# the locked requirements first, so that a change to the code alone reuses this layer
COPY deploy/requirements.txt deploy/install-venv.sh deploy/
RUN sh deploy/install-venv.sh /opt/venv
COPY pyproject.toml README.md ./
COPY dataops_lab/ dataops_lab/
RUN sh deploy/install-venv.sh /opt/venv /src

# ---- runtime: the virtualenv on a slim Python, run by an unprivileged user
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 dataops \
 && useradd --system --uid 10001 --gid dataops --home-dir /var/lib/dataops-lab --create-home --shell /usr/sbin/nologin dataops
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATAOPS_API__HOST=0.0.0.0 \
    DATAOPS_API__PORT=8000 \
    DATAOPS_DASHBOARD__HOST=0.0.0.0 \
    DATAOPS_DASHBOARD__PORT=5006 \
    DATAOPS_LOGGING__FORMAT=json
WORKDIR /var/lib/dataops-lab
USER 10001:10001
EXPOSE 8000 5006
HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('DATAOPS_API__PORT', '8000'), timeout=4)"]
CMD ["dataops-lab", "serve"]
