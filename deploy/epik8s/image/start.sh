#!/bin/sh
# /epics/ioc/start.sh in the iocmng image: the ioc-chart's `start:` for a soft IOC
# whose config directory has no start.sh of its own. It runs the plugin in
# /epics/ioc/config (config.yaml and, if any, the one plugin .py beside it) with
# the PV prefix and name the chart sets (IOC_PREFIX, IOC_NAME).
set -e
cd "${IOCMNG_RUN_DIR:-/epics/ioc/config}"
exec iocmng-run --config config.yaml "$@"
