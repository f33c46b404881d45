# The enrichment dataflow image: `python -m bytewax.run dataflow` as a non-root user.
# Build: docker build -t enrichment-dataflow .   (Kubernetes: k8s/)
# Python 3.12: bytewax 0.21.1 has wheels for 3.8-3.12 (manylinux glibc 2.31; bookworm has 2.36).
# Pinned by digest: the multi-arch index of Docker Hub's python:3.12.10-slim-bookworm as
# published, seen pinned in public repositories (e.g. Ev3rGan/ai-ledger,
# deploy/m1/production.Dockerfile, committed 2026-08-17), so the tag's image as of that date.
# Not checked against the registry when pinned. To move it: docker buildx imagetools inspect <tag>.
FROM python:3.12.10-slim-bookworm@sha256:fd95fa221297a88e1cf49c55ec1828edd7c5a428187e67b5d1805692d11588db

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir --only-binary=:all: -r requirements.txt

COPY dataflow.py ./
COPY flows ./flows
# tools/provision.py creates the topics and tables in Compose's init service; ops/ is the
# operator tools (python -m ops), for on-call work inside the cluster
COPY tools ./tools
COPY ops ./ops
# waxctl / Bytewax's Helm chart run `sh ./entrypoint.sh` (and `sh ./entrypoint-recovery.sh`)
COPY k8s/waxctl/entrypoint.sh k8s/waxctl/entrypoint-recovery.sh ./
ENV PYTHONPATH=/app

# the recovery directory is a volume: created here, owned by the user, so a fresh named
# volume (Compose) starts writable; Kubernetes sets fsGroup instead
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin enrichment \
    && mkdir -p /var/recovery \
    && chown enrichment:enrichment /var/recovery
USER 10001

# 9999: the Bytewax cluster (process to process); 3030: the dataflow API (/metrics)
EXPOSE 9999 3030
ENV BYTEWAX_DATAFLOW_API_CACHE_PATH=/tmp

CMD ["python", "-m", "bytewax.run", "dataflow"]
