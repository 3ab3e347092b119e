#!/bin/sh
# /epics/ioc/stop.sh in the iocmng image: the ioc-chart's preStop hook (its `stop:`).
# The chart's shell is PID 1 and does not pass SIGTERM on to ./start.sh; this sends
# it to the iocmng processes themselves, so every plugin's cleanup() runs, and the
# container ends when they exit (within the pod's grace period, which the kubelet
# enforces: no waiting here).
for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    if [ "$pid" = 1 ] || [ "$pid" = $$ ]; then
        continue
    fi
    cmd=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
    case "$cmd" in
        *iocmng-run*|*iocmng-server*|*iocmng.runtime.run_alias*) kill -TERM "$pid" 2>/dev/null || true ;;
    esac
done
exit 0
