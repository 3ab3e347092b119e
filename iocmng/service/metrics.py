"""Prometheus metrics at ``GET /metrics`` (prometheus_client).

Nothing here runs in a plugin's hot path: the runtime keeps plain counters
and :class:`~iocmng.runtime.runtime.Durations` histograms on each plugin handle, and
this collector reads them when Prometheus scrapes. Counters restart with each
generation (a reload is a new process); Prometheus handles counter resets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..runtime.runtime import DURATION_BUCKETS, Durations, State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _buckets(d: Durations) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip((*DURATION_BUCKETS, float("inf")), d.counts, strict=True):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


class ServiceCollector:
    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        handles = list(svc.runtime.handles.values())
        cycles = CounterMetricFamily(
            "iocmng_plugin_cycles", "Completed task cycles (successful)", labels=["plugin"]
        )
        errors = CounterMetricFamily(
            "iocmng_plugin_errors", "Plugin errors (cycles, runs, hooks)", labels=["plugin"]
        )
        overruns = CounterMetricFamily(
            "iocmng_plugin_overruns", "Cycles that overran their interval", labels=["plugin"]
        )
        stalls = CounterMetricFamily(
            "iocmng_plugin_loop_stalls",
            "Times the plugin held the event loop past the threshold",
            labels=["plugin"],
        )
        duration = HistogramMetricFamily(
            "iocmng_plugin_cycle_duration_seconds", "Task cycle duration", labels=["plugin"]
        )
        runs = CounterMetricFamily(
            "iocmng_job_runs", "Job runs by result", labels=["plugin", "result"]
        )
        run_time = HistogramMetricFamily(
            "iocmng_job_duration_seconds", "Job run duration", labels=["plugin"]
        )
        state = GaugeMetricFamily(
            "iocmng_plugin_state",
            "1 for the plugin's current state",
            labels=["plugin", "kind", "state"],
        )
        for h in handles:
            state.add_metric([h.name, h.kind, str(h.state)], 1)
            errors.add_metric([h.name], h.error_count)
            stalls.add_metric([h.name], h.stalls)
            if h.kind == "job":
                runs.add_metric([h.name, "success"], h.cycle_count - h.job_failures)
                runs.add_metric([h.name, "failure"], h.job_failures)
                run_time.add_metric([h.name], _buckets(h.durations), h.durations.sum)
            else:
                cycles.add_metric([h.name], h.cycle_count)
                overruns.add_metric([h.name], h.overruns)
                duration.add_metric([h.name], _buckets(h.durations), h.durations.sum)
        for pending in set(svc.registry.plugins) - set(svc.runtime.handles):
            state.add_metric([pending, svc.registry.plugins[pending].kind, str(State.PENDING)], 1)
        yield from (cycles, errors, overruns, stalls, duration, runs, run_time, state)

        gen = GaugeMetricFamily("iocmng_generation", "Generation this process serves")
        gen.add_metric([], svc.generation)
        yield gen
        reloads = CounterMetricFamily(
            "iocmng_reloads", "Reloads applied since the data directory was created"
        )
        reloads.add_metric([], max(0, svc.generation - 1))
        yield reloads
        up = GaugeMetricFamily("iocmng_uptime_seconds", "Seconds since this generation started")
        up.add_metric([], time.time() - svc.started_at)
        yield up
        sse = GaugeMetricFamily("iocmng_event_stream_clients", "Connected SSE clients")
        sse.add_metric([], svc.events.subscribers)
        yield sse
        # Not per plugin (one process): a plugin leaking threads shows here.
        threads = GaugeMetricFamily("iocmng_threads", "Threads in the service process")
        threads.add_metric([], threading.active_count())
        yield threads
        wd = svc.watchdog
        if wd is not None:
            lag = HistogramMetricFamily(
                "iocmng_loop_lag_seconds", "Event-loop lag measured by a heartbeat"
            )
            lag.add_metric([], _buckets(wd.lag), wd.lag.sum)
            yield lag
            last = GaugeMetricFamily("iocmng_loop_lag_last_seconds", "Most recent event-loop lag")
            last.add_metric([], wd.last_lag)
            yield last
            st = CounterMetricFamily(
                "iocmng_loop_stalls", "Event-loop stalls past the watchdog threshold"
            )
            st.add_metric([], wd.stalls)
            yield st


def make_registry(service: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))  # type: ignore[arg-type]
    # process_resident_memory_bytes, process_open_fds, ...: leaks of any plugin show here.
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
