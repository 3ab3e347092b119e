"""The IOC bridge: the ONLY module that imports softioc.

EPICS keeps its record database in process-global state that is frozen at
``iocInit``: records can be created only before it, never after, and never
deleted. So the bridge works in two phases. First the records of every
plugin's :class:`~iocmng.epics.plan.RecordPlan` of a generation are built
(:meth:`IocBridge.create`, the :class:`~iocmng.epics.backend.RecordBackend`
protocol); then
:meth:`IocBridge.start` runs ``iocInit`` exactly once, with pythonSoftIOC's
``AsyncioDispatcher`` built on the service's running loop so record
callbacks run as coroutines on that same loop. Any change to the record set
after that is the reload's job (see :mod:`iocmng.service.reload`).

What the records are (names, types, fields) is the plan's business
(:mod:`iocmng.epics.plan`, pure); its names are re-exported here as well.

Records of a plugin ``NAME`` are ``<prefix>:<NAME>:<PV>``. Clients (CA and
PVA) may write the VAL of the writable records (inputs, ENABLE, RUN, CLEAR,
RESET) and nothing else: EPICS access security, loaded before ``iocInit``
(:mod:`iocmng.epics.access_security`). Read-only records keep ``DISP=1`` as a second
layer: the database itself refuses puts to them (clients can no longer clear it).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.models import PVSpec, coerce_value
from . import plan as _plan
from .access_security import WRITABLE, access_security_file, check_active
from .backend import Callbacks, InputHandler, RecordBackend, RecordTable, RunHandler
from .plan import *  # noqa: F403 (the plan's names stay importable from the bridge module)
from .plan import (
    MAX_STRING,
    Alarm,
    RecordPlan,
    RecordSpec,
    Severity,
    status_fields,
    truncate,
)

log = logging.getLogger("iocmng.ioc")

__all__ = ["ArrayRecord", "FastRecord", "InputHandler", "IocBridge", "PluginRecords", "RunHandler"]
__all__ += _plan.__all__


@dataclass
class PluginRecords(RecordTable):
    """The live records of one plugin, addressed by short name (a :class:`~iocmng.epics.backend.Records`)."""

    def attach(self) -> None:
        """Bind to the live database (after iocInit)."""
        self.live = True
        for rec in self.records.values():
            if isinstance(rec, FastRecord):
                rec.attach()

    def set_quiet(self, short: str, value: Any) -> None:
        """Set an output record's value without processing, and post it to monitors."""
        self.records[short].set(value, process=False)
        if self.live:
            post_monitor(f"{self.prefix}:{short}")

    def get(self, short: str) -> Any:
        return self._record(short).get()

    def force_alarm(self, short: str, alarm: Alarm | None) -> None:
        """Raise ``alarm`` on a read-only record at every processing (None: stop).
        Records that are not iocmng's own fast records (writable ones, CONN_*) are left as they are."""
        rec = self._record(short)
        if isinstance(rec, FastRecord):
            rec.force_alarm(alarm)


class _DbAddr(ctypes.Structure):
    # The head of EPICS's DBADDR (dbAddr.h); the tail is room we never read.
    _fields_ = [
        ("precord", ctypes.c_void_p),
        ("pfield", ctypes.c_void_p),
        ("_rest", ctypes.c_char * 112),
    ]


_DBE_VALUE_LOG = 1 | 2  # DBE_VALUE | DBE_LOG
# Database request types (dbFldTypes.h numbering, not db_access.h's).
_DBR = {
    "string": (0, None),
    "int": (5, ctypes.c_int32),
    "float": (10, ctypes.c_double),
    "bool": (11, ctypes.c_uint16),
    "enum": (11, ctypes.c_uint16),
}


_DBCORE: Any = None


def _db() -> Any:
    """EPICS's dbCore library with the prototypes we call (loaded by softioc).

    Loaded as ``ctypes.PyDLL``: these calls are a few microseconds and keep
    the GIL. With ``CDLL`` each of the four calls of a record update would
    release and re-take it (40 000 times a second at 1000 tasks × 10 Hz),
    inviting a thread switch each time. Holding it is safe: the records we
    lock are plain soft records whose processing never calls into Python.
    """
    global _DBCORE
    if _DBCORE is not None:
        return _DBCORE
    from epicscorelibs.ioc import dbCore as loaded

    dbCore = ctypes.PyDLL(loaded._name)
    if not getattr(dbCore, "_iocmng_ready", False):
        dbCore.dbNameToAddr.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
        dbCore.dbNameToAddr.restype = ctypes.c_long
        for fn in (dbCore.dbScanLock, dbCore.dbScanUnlock):
            fn.argtypes = (ctypes.c_void_p,)
            fn.restype = None
        dbCore.dbProcess.argtypes = (ctypes.c_void_p,)
        dbCore.dbProcess.restype = ctypes.c_long
        dbCore.dbPut.argtypes = (ctypes.c_void_p, ctypes.c_short, ctypes.c_void_p, ctypes.c_long)
        dbCore.dbPut.restype = ctypes.c_long
        dbCore.db_post_events.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint)
        dbCore._iocmng_ready = True  # type: ignore[attr-defined]
    _DBCORE = dbCore
    return dbCore


def _addr(name: str) -> _DbAddr:
    addr = _DbAddr()
    if _db().dbNameToAddr(name.encode(), ctypes.byref(addr)) != 0:
        raise KeyError(f"record {name} not found")
    return addr


def post_monitor(name: str) -> None:
    """Post a record's current VAL to its monitors (CA and PVA subscribers).

    An asynchronous (blocking) record posts monitors only when its processing
    completes; RUN uses this so that a monitor sees 1 when a triggered cycle
    starts and 0 when it ends, as a caget does.
    """
    addr = _addr(name)
    _db().db_post_events(addr.precord, addr.pfield, _DBE_VALUE_LOG)


class FastRecord:
    """A read-only record (ai, longin, bi, mbbi, stringin) that only iocmng writes.

    pythonSoftIOC's ``.set()`` on an input record queues an I/O interrupt, and
    EPICS's callback thread then processes the record by calling back into
    Python under the GIL: about 50 µs of GIL time per update, which at 1000
    tasks × 10 Hz is most of a core. These are plain soft records instead,
    updated the way EPICS's own database code does it: lock, ``dbPut`` VAL,
    ``dbProcess`` (timestamp, alarms, monitors), unlock, all in the calling
    thread; measured here about 3 % of a core for 10 000 updates/s. Clients
    cannot write them (access security, and ``DISP=1``; ``dbPut`` is below both).
    """

    __slots__ = ("name", "kind", "value", "_addr", "_dbr", "_ctype", "forced", "_nsta", "_nsev")

    def __init__(self, name: str, kind: str, value: Any) -> None:
        self.name, self.kind, self.value = name, kind, value
        self._dbr, self._ctype = _DBR[kind]
        self._addr: _DbAddr | None = None
        #: (status, severity) raised at every processing, e.g. LINK_ALARM (LINK, INVALID)
        #: while a value this record shows depends on a disconnected link
        self.forced: Alarm | tuple[int, int] | None = None
        self._nsta: Any = None
        self._nsev: Any = None

    def attach(self) -> None:
        """Resolve the record after iocInit and process it once with its value."""
        self._addr = _addr(self.name)
        self.set(self.value)

    def force_alarm(self, alarm: Alarm | tuple[int, int] | None) -> None:
        """Raise (status, severity) on this record from now on (None: stop), and process it."""
        if alarm == self.forced:
            return
        self.forced = alarm
        if alarm is not None and self._nsta is None and self._addr is not None:
            # NSTA/NSEV ("new" status/severity) are what processing turns into
            # STAT/SEVR; set before dbProcess they raise the alarm, and the
            # record's own alarm checks can only raise it further.
            self._nsta = ctypes.c_uint16.from_address(_addr(f"{self.name}.NSTA").pfield)
            self._nsev = ctypes.c_uint16.from_address(_addr(f"{self.name}.NSEV").pfield)
        self.set(self.value)

    def set(self, value: Any) -> None:
        self.value = value
        addr = self._addr
        if addr is None:  # before iocInit: the value is the record's initial VAL
            return
        if self._ctype is None:
            buf: Any = ctypes.create_string_buffer(str(value).encode("utf-8")[:MAX_STRING], 40)
        else:
            buf = self._ctype(value)
        db = _db()
        precord = addr.precord
        db.dbScanLock(precord)
        try:
            db.dbPut(ctypes.byref(addr), self._dbr, ctypes.byref(buf), 1)
            forced = self.forced
            if forced is not None and self._nsev is not None and self._nsev.value < forced[1]:
                self._nsta.value, self._nsev.value = forced
            db.dbProcess(precord)
        finally:
            db.dbScanUnlock(precord)

    def get(self) -> Any:
        return self.value


def _alarm_fields(spec: PVSpec) -> dict[str, Any]:
    """Record fields of ``alarm_on``: the record raises the alarm itself when it processes."""
    if spec.alarm_on is None:
        return {}
    if spec.type == "bool":
        return {"ZSV": Severity.NO_ALARM.name, "OSV": spec.alarm_on}
    fields: dict[str, Any] = {}
    if spec.alarm_high is not None:
        fields.update(HIGH=_limit(spec, spec.alarm_high, up=True), HSV=spec.alarm_on)
    if spec.alarm_low is not None:
        fields.update(LOW=_limit(spec, spec.alarm_low, up=False), LSV=spec.alarm_on)
    return fields


def _limit(spec: PVSpec, value: float | None, *, up: bool) -> float | int | None:
    """A limit as its record field takes it: an integer record's (longin/longout: LOPR,
    DRVL, HIGH... are DBF_LONG) is the nearest integer inside the range the float gave
    (a low bound up, a high bound down), so every integer the float allows still is."""
    if value is None or spec.type != "int":
        return value
    return math.ceil(value) if up else math.floor(value)


class ArrayRecord:
    """A CONN_INP/CONN_OUT waveform (one 0/1 element per link); rare updates, through softioc."""

    __slots__ = ("record", "value")

    def __init__(self, record: Any, count: int) -> None:
        self.record = record
        self.value = [0] * count

    def set(self, value: Any) -> None:
        import numpy

        self.value = [int(v) for v in value]
        self.record.set(numpy.array(self.value, dtype=numpy.uint8))

    def get(self) -> list[int]:
        return list(self.value)


def _special_record(full: str, rec: RecordSpec) -> Any:
    from softioc import builder

    if rec.special == "conn":
        import numpy

        record = builder.WaveformIn(
            full,
            initial_value=numpy.zeros(rec.count, dtype=numpy.uint8),
            DISP=1,
            DESC="1 per connected link, in CONN_*_NAMES order"[:40],
        )
        return ArrayRecord(record, rec.count)
    text = str(rec.spec.value)
    return builder.longStringIn(
        full, initial_value=text, length=max(len(text.encode()) + 1, 40), DISP=1
    )


class IocBridge(RecordBackend["PluginRecords"]):
    """Builds every record of a generation, then runs ``iocInit`` once."""

    def __init__(self, prefix: str, *, exact: bool = False, acf: Path | None = None) -> None:
        super().__init__(prefix, exact=exact)
        self._dispatcher: Any = None
        self.acf = acf  # a site's access security file (IOCMNG_ACF); None: the built-in one

    def _build(
        self, plan: RecordPlan, calls: Callbacks, restored: Mapping[str, Any]
    ) -> PluginRecords:
        name, kind, on_input, on_run = plan.name, plan.kind, calls.on_input, calls.on_run
        from softioc import builder

        out = PluginRecords(plan.base)
        for rec in plan.records:
            full = f"{out.prefix}:{rec.short}"
            spec = rec.spec
            value = spec.value
            if rec.special in ("conn", "names"):
                out.records[rec.short] = _special_record(full, rec)
                out.types[rec.short] = rec.value_type
                continue
            if rec.autosave and rec.short in restored:
                try:
                    value = coerce_value(spec.type, restored[rec.short])
                except (TypeError, ValueError):
                    log.warning(
                        "ignoring unusable saved value %r for %s", restored[rec.short], full
                    )
            fields: dict[str, Any] = {}
            if spec.description:
                fields["DESC"] = spec.description
            if rec.short == "STATUS":  # states and severities from TaskStatus / JobStatus
                builder.records.mbbi(full, VAL=0, UDF=0, DISP=1, **status_fields(kind))
                out.types[rec.short] = rec.value_type
                out.records[rec.short] = FastRecord(full, "enum", 0)
                continue
            if rec.writable:
                out.writable.add(rec.short)
                record = self._out_record(full, spec, value, fields, rec, name, on_input, on_run)
            else:
                record = self._in_record(full, spec, value, fields)
            out.records[rec.short] = record
            out.types[rec.short] = rec.value_type
        return out

    @staticmethod
    def _in_record(full: str, spec: PVSpec, value: Any, fields: dict[str, Any]) -> FastRecord:
        from softioc import builder

        fields.update(_alarm_fields(spec))
        fields.update(VAL=value, UDF=0, DISP=1)  # DISP=1: read-only to clients
        if spec.unit is not None:
            fields["EGU"] = spec.unit
        if spec.type in ("float", "int"):
            limits = (
                ("LOPR", _limit(spec, spec.low, up=True)),
                ("HOPR", _limit(spec, spec.high, up=False)),
            )
            fields.update({k: v for k, v in limits if v is not None})
        if spec.type == "float":
            if spec.prec is not None:
                fields["PREC"] = spec.prec
            builder.records.ai(full, **fields)
        elif spec.type == "int":
            builder.records.longin(full, **fields)
        elif spec.type == "bool":
            fields.update(
                {k: v for k, v in (("ZNAM", spec.znam), ("ONAM", spec.onam)) if v is not None}
            )
            builder.records.bi(full, **fields)
        else:
            value = fields["VAL"] = truncate(value)
            builder.records.stringin(full, **fields)
        return FastRecord(full, spec.type, value)

    @staticmethod
    def _out_record(
        full: str,
        spec: PVSpec,
        value: Any,
        fields: dict[str, Any],
        rec: RecordSpec,
        plugin: str,
        on_input: InputHandler,
        on_run: RunHandler | None,
    ) -> Any:
        from softioc import builder

        fields["ASG"] = WRITABLE  # clients may write VAL (access security), no other field
        if rec.short == "RUN":
            assert on_run is not None, "triggered tasks need a run handler"

            async def run_update(v: Any) -> None:
                if v:
                    post_monitor(full)  # RUN=1 is visible to monitors while the cycle runs
                    await on_run()

            # blocking: a CA put-with-callback completes only when the cycle ends
            return builder.boolOut(
                full,
                spec.znam,
                spec.onam,
                initial_value=0,
                on_update=run_update,
                blocking=True,
                always_update=True,
                **fields,
            )

        def update(v: Any, _short: str = rec.short) -> Awaitable[None] | None:
            return on_input(_short, v)

        fields.update(_alarm_fields(spec))
        kw = dict(initial_value=value, on_update=update, always_update=True, **fields)
        if spec.type == "float":
            return builder.aOut(
                full,
                EGU=spec.unit,
                PREC=spec.prec,
                LOPR=spec.low,
                HOPR=spec.high,
                DRVL=spec.low,
                DRVH=spec.high,
                **kw,
            )
        if spec.type == "int":
            low, high = _limit(spec, spec.low, up=True), _limit(spec, spec.high, up=False)
            return builder.longOut(
                full, EGU=spec.unit, LOPR=low, HOPR=high, DRVL=low, DRVH=high, **kw
            )
        if spec.type == "bool":
            return builder.boolOut(full, spec.znam, spec.onam, **kw)
        kw["initial_value"] = truncate(value)
        return builder.stringOut(full, **kw)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load the database and run ``iocInit`` (once per process) on ``loop``."""
        if self.started:
            raise RuntimeError("iocInit already ran in this process")
        from softioc import asyncio_dispatcher, builder, softioc

        # Built on our running loop: record callbacks become coroutines on it.
        # Never call its close(): with loop= it raises AttributeError (softioc 4.7).
        self._dispatcher = asyncio_dispatcher.AsyncioDispatcher(loop=loop)
        builder.LoadDatabase()
        with access_security_file(self.acf):  # iocInit's asInit reads it
            softioc.iocInit(self._dispatcher)
        self.started = True
        check_active(self.acf)
        for records in self.plugins.values():
            records.attach()
        log.info(
            "IOC started: %d plugin(s), %d record(s)",
            len(self.plugins),
            sum(len(p.records) for p in self.plugins.values()),
        )
