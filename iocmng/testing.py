"""An in-memory record backend for tests: iocmng's records without EPICS.

:class:`FakeBackend` implements :class:`~iocmng.epics.backend.RecordBackend`
like the softioc bridge does, from the same :class:`~iocmng.epics.plan.RecordPlan`,
so the record names, their types and initial values are the real ones; nothing
is served (no softioc import, no ``iocInit``, no network), so any number of
backends may live in one process. A test plays the operator with
:meth:`FakeBackend.write`, which behaves as a Channel Access put does:
read-only records are refused (EPICS access security), drive limits clamp,
then the record's handler runs (``on_input``; ``on_run`` for RUN=1)::

    from iocmng.epics.plan import plan
    from iocmng.testing import FakeBackend

    backend = FakeBackend("TEST")
    records = backend.create(plan("TEST", "demo", "task", config), on_input=handler)
    await backend.write("demo", "ENABLE", 0)
    assert backend.value("demo", "STATUS") == TaskStatus.PAUSED

Every value a record takes is kept (:meth:`FakeBackend.history`), and so is
the alarm forced on it (:meth:`FakeBackend.alarm`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config.models import coerce_value
from .epics.backend import Callbacks, InputHandler, RecordBackend, RecordTable, RunHandler
from .epics.plan import Alarm, RecordPlan, RecordSpec, record_value

__all__ = ["FakeBackend", "FakeRecord", "FakeRecords"]

log = logging.getLogger("iocmng.testing")


class FakeRecord:
    """One record: its current value and every value it took, in order."""

    __slots__ = ("spec", "value", "history")

    def __init__(self, spec: RecordSpec, value: Any) -> None:
        self.spec = spec
        self.value = value
        self.history: list[Any] = [value]

    def set(self, value: Any, process: bool = True) -> None:
        self.value = value
        self.history.append(value)

    def get(self) -> Any:
        return self.value


@dataclass
class FakeRecords(RecordTable):
    """The records of one plugin (a :class:`~iocmng.epics.backend.Records`)."""

    #: The alarm forced on each record by :meth:`force_alarm` (absent: none).
    alarms: dict[str, Alarm] = field(default_factory=dict)

    def set_quiet(self, short: str, value: Any) -> None:
        self._record(short).set(value, process=False)

    def get(self, short: str) -> Any:
        return self._record(short).get()

    def force_alarm(self, short: str, alarm: Alarm | None) -> None:
        rec = self._record(short)
        if rec.spec.writable or rec.spec.special in ("conn", "names"):
            return  # as the bridge: only iocmng's own read-only records take a forced alarm
        if alarm is None:
            self.alarms.pop(short, None)
        else:
            self.alarms[short] = alarm


def _initial(rec: RecordSpec, restored: Mapping[str, Any], full: str) -> Any:
    """A record's value before anyone writes it, as the bridge gives it."""
    if rec.special == "conn":
        return [0] * rec.count
    if rec.short == "STATUS":
        return 0
    value = rec.spec.value
    if rec.autosave and rec.short in restored:
        try:
            value = coerce_value(rec.spec.type, restored[rec.short])
        except (TypeError, ValueError):
            log.warning("ignoring unusable saved value %r for %s", restored[rec.short], full)
    return record_value(rec.value_type, value)


def _clamp(spec: RecordSpec, value: Any) -> Any:
    """An ao/longout's drive limits (DRVL/DRVH: the PV's low/high), which apply when high > low."""
    s = spec.spec
    if s.type in ("float", "int") and s.low is not None and s.high is not None and s.high > s.low:
        value = min(max(value, s.low), s.high)
        return float(value) if s.type == "float" else int(value)
    return value


class FakeBackend(RecordBackend["FakeRecords"]):
    """Records in memory (a :class:`~iocmng.epics.backend.RecordBackend`); the test is the operator."""

    def __init__(self, prefix: str = "TEST", *, exact: bool = False) -> None:
        super().__init__(prefix, exact=exact)
        self.on_input: dict[str, InputHandler] = {}
        self.on_run: dict[str, RunHandler | None] = {}

    # -- the RecordBackend ----------------------------------------------------------------
    def _build(
        self, plan: RecordPlan, calls: Callbacks, restored: Mapping[str, Any]
    ) -> FakeRecords:
        name, base, specs, on_run = plan.name, plan.base, plan.records, calls.on_run
        if any(r.short == "RUN" for r in specs) and on_run is None:
            raise ValueError("triggered tasks need a run handler")
        out = FakeRecords(base)
        for rec in specs:
            full = f"{base}:{rec.short}"
            out.records[rec.short] = FakeRecord(rec, _initial(rec, restored, full))
            out.types[rec.short] = rec.value_type
            if rec.writable:
                out.writable.add(rec.short)
        self.on_input[name] = calls.on_input
        self.on_run[name] = on_run
        return out

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Freeze the record set, as ``iocInit`` does; the records become live."""
        if self.started:
            raise RuntimeError("iocInit already ran in this process")
        self.started = True
        for records in self.plugins.values():
            records.live = True

    # -- the operator ---------------------------------------------------------------------
    async def write(self, plugin: str, short: str, value: Any) -> Any:
        """Write ``value`` to a record as a CA client would; return the value the record took.

        A read-only record raises PermissionError (access security refuses the
        put); a value that does not convert raises ValueError. RUN=1 awaits the
        triggered cycle, as a put-with-callback does.
        """
        records = self.plugins[plugin]
        rec = records._record(short)
        if not rec.spec.writable:
            raise PermissionError(f"{records.prefix}:{short} is read-only (write access denied)")
        value = _clamp(rec.spec, record_value(records.types[short], value))
        rec.set(value)
        if short == "RUN":
            run = self.on_run[plugin]
            if value and run is not None:
                await run()
            return value
        result = self.on_input[plugin](short, value)
        if inspect.isawaitable(result):
            await result
        return value

    def value(self, plugin: str, short: str) -> Any:
        """The current value of a record."""
        return self.plugins[plugin].get(short)

    def history(self, plugin: str, short: str) -> list[Any]:
        """Every value a record took, its initial value first."""
        return list(self.plugins[plugin]._record(short).history)

    def alarm(self, plugin: str, short: str) -> Alarm | None:
        """The alarm forced on a record (None: none)."""
        return self.plugins[plugin].alarms.get(short)

    def names(self) -> list[str]:
        """Every record's full name, plugin after plugin."""
        return [n for records in self.plugins.values() for n in records.names()]
