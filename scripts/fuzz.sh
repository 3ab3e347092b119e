#!/usr/bin/env bash
# A long API fuzzing session: tests/system/test_fuzz.py with many examples per
# operation and mode (default 300; ~10-12 min on 2 cores). Loopback only.
#
#     scripts/fuzz.sh            # 300 examples
#     scripts/fuzz.sh 1000       # more
#
# Prints the request count by status; the JSON report goes to $IOCMNG_FUZZ_REPORT
# (default /tmp/iocmng-fuzz.json).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-${VENV:-$repo/.venv}/bin/python}"
[[ -x "$py" ]] || py=python3
export IOCMNG_FUZZ_EXAMPLES="${1:-300}"
export IOCMNG_FUZZ_REPORT="${IOCMNG_FUZZ_REPORT:-/tmp/iocmng-fuzz.json}"
cd "$repo"
"$py" -m pytest -p no:cacheprovider tests/system/test_fuzz.py -q -s --timeout 0 "${@:2}"
cat "$IOCMNG_FUZZ_REPORT"; echo
