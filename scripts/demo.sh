#!/usr/bin/env bash
# Set up a virtual environment (.venv) and run the service with the example plugins.
#   bash scripts/demo.sh            (Ctrl-C to stop)
# Settings are IOCMNG_* variables (docs/operations.md); the REST API listens on
# ${IOCMNG_HOST:-127.0.0.1}:${IOCMNG_PORT:-8080} and the PVs are served under ${IOCMNG_PREFIX:-IOCMNG}:.
# Changes through the API need a token (docs/security.md): unless IOCMNG_API_TOKEN is
# set, this run makes one, prints it here and keeps it nowhere else.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
export IOCMNG_PLUGINS_DIR="${IOCMNG_PLUGINS_DIR:-$PWD/.demo-data}"
export IOCMNG_HOST="${IOCMNG_HOST:-127.0.0.1}"
if [ -z "${IOCMNG_API_TOKEN:-}" ]; then
  IOCMNG_API_TOKEN="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
  export IOCMNG_API_TOKEN
  shown="$IOCMNG_API_TOKEN"
else
  shown='(your $IOCMNG_API_TOKEN)'
fi
url="http://${IOCMNG_HOST}:${IOCMNG_PORT:-8080}"
cat <<INFO
iocmng demo: dashboard ${url}/  (enter the token at the top of the page to make changes)
API token of this run: ${shown}
Call the API with it, from another shell:
  export IOCMNG_API_TOKEN='${shown}'
  .venv/bin/iocmng --server ${url} job run diagnostics_job
  curl -X POST -H "Authorization: Bearer \$IOCMNG_API_TOKEN" ${url}/api/v1/jobs/diagnostics_job/run
INFO
exec .venv/bin/iocmng-server --demo
