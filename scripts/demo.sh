#!/usr/bin/env bash
# Set up a virtual environment (.venv) and run the service with the example plugins.
#   bash scripts/demo.sh            (Ctrl-C to stop)
# Settings are IOCMNG_* variables (docs/operations.md); the REST API listens on
# ${IOCMNG_PORT:-8080} and the PVs are served under ${IOCMNG_PREFIX:-IOCMNG}:.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
export IOCMNG_PLUGINS_DIR="${IOCMNG_PLUGINS_DIR:-$PWD/.demo-data}"
exec .venv/bin/iocmng-server --demo
