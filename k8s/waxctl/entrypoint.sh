#!/bin/sh
# For waxctl / Bytewax's Helm chart, whose container runs `sh ./entrypoint.sh` in the image's
# working directory: the same command as the image's CMD. waxctl copies the deployed script
# to BYTEWAX_PYTHON_FILE_PATH (/var/bytewax/dataflow.py); the flows package comes from the
# image (PYTHONPATH=/app).
set -e
cd "${BYTEWAX_WORKDIR:-/app}"
exec python -m bytewax.run "${BYTEWAX_PYTHON_FILE_PATH:-dataflow}"
