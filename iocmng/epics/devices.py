"""Optional ophyd devices for plugins, built by infn_ophyd_hal from the beamline values.yaml (SPEC §9).

With the ``ophyd`` extra installed and ``IOCMNG_DISABLE_OPHYD=false``, the
service reads ``IOCMNG_BEAMLINE_CONFIG`` (an epik8s values.yaml) and builds
one device per entry of ``epicsConfiguration.iocs[*].devices`` (or one per
IOC without ``devices``) with infn_ophyd_hal's ``DeviceFactory`` classes.

Life of the registry::

    start()   parse + validate values.yaml (a bad file: `error`, no devices)
              -> builder threads: import ophyd, pick the control layer, build
    ready()   the plugins' start waits (bounded) for the builds
    get()     a built device, or None (pending, failed, disabled, no extra)
    close()   destroy devices, disconnect the CA client

Every device carries its own state (``pending``, ``ok``, ``disconnected``,
``failed`` with a reason naming the device and the problem, ``disabled``).
Building happens in daemon threads: an unreachable IOC costs its own
device a connection timeout and nothing else; start-up never waits on it
beyond :data:`READY_TIMEOUT`.

ophyd runs on its **caproto** control layer here, not pyepics: see
docs/decisions/0007-ophyd-control-layer.md (pyepics never connects to the
PVs served by this very process).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("iocmng.devices")

#: Seconds the plugins' start waits for device builds (each build is bounded
#: by ophyd's own connection timeout; what is still pending afterwards is
#: handed out once it is built).
READY_TIMEOUT = 10.0
#: Seconds a built ophyd device gets to connect before it is listed as disconnected.
CONNECT_TIMEOUT = 2.0
#: Concurrent builds: bounds the threads, while one dead IOC does not queue the others.
BUILDERS = 8
#: ophyd control layer used unless OPHYD_CONTROL_LAYER says otherwise (decision 0007).
CONTROL_LAYER = "caproto"


class DeviceEntry(BaseModel):
    """One element of an IOC's ``devices`` list (other keys pass to the device as config)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Device name: the key plugins pass to get_device()")
    devtype: str | None = Field(None, description="Overrides the IOC's devtype for this device")
    disable: bool = Field(False, description="Do not build this device")


class IocEntry(BaseModel):
    """One element of ``epicsConfiguration.iocs`` that carries a ``devgroup``."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="IOC name")
    devgroup: str = Field(description="infn_ophyd_hal device group (mot, mag, diag, io, vac)")
    devtype: str = Field(
        description="infn_ophyd_hal device type within the group (sim, asyn, ai, ...)"
    )
    iocprefix: str = Field(description="PV prefix of the IOC")
    iocroot: str | None = Field(None, description="Optional middle part of device PV prefixes")
    devices: list[DeviceEntry] = Field(default_factory=list, description="Devices of this IOC")
    disable: bool = Field(False, description="Do not build this IOC's devices")


class BeamlineValues(BaseModel):
    """The top level of an epik8s values.yaml, as far as devices go."""

    model_config = ConfigDict(extra="allow")

    beamline: str
    namespace: str
    epicsConfiguration: dict[str, Any]  # noqa: N815 (the values.yaml key)


def _problem(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(
            f"missing key {where!r}" if err["type"] == "missing" else f"{where}: {err['msg']}"
        )
    return "; ".join(parts)


class DeviceState(StrEnum):
    """A configured device's state (``GET /api/v1/devices``)."""

    PENDING = "pending"  # configured, not built yet
    OK = "ok"  # built and connected
    DISCONNECTED = "disconnected"  # built, its IOC not reachable (yet)
    FAILED = "failed"  # cannot be built (the reason says why)
    DISABLED = "disabled"  # disabled in the beamline values


@dataclass
class DeviceRecord:
    """What the registry knows about one configured device."""

    name: str
    ioc: str
    group: str
    type: str
    prefix: str
    config: dict[str, Any]
    state: DeviceState = DeviceState.PENDING
    reason: str | None = None
    device_class: str | None = None
    device: Any = None

    def live_state(self) -> str:
        if self.state in (DeviceState.OK, DeviceState.DISCONNECTED) and hasattr(
            self.device, "connected"
        ):
            try:
                return DeviceState.OK if self.device.connected else DeviceState.DISCONNECTED
            except Exception:  # a half-destroyed device: report what we had
                return self.state
        return self.state

    def info(self) -> dict[str, Any]:
        state = self.live_state()
        reason = self.reason
        if state == DeviceState.DISCONNECTED and not reason:
            reason = (
                f"device {self.name!r}: not connected to IOC {self.ioc!r} (prefix {self.prefix})"
            )
        return {
            "name": self.name,
            "ioc": self.ioc,
            "group": self.group,
            "type": self.type,
            "prefix": self.prefix,
            "state": state,
            "reason": reason if state != DeviceState.OK else None,
            "class": self.device_class,
        }


def plan(values: Any) -> tuple[list[DeviceRecord], str | None]:
    """The devices a parsed values.yaml describes, and a file-level error (or None).

    An IOC entry with a problem becomes one failed record named after the IOC
    (or its index): the other IOCs are unaffected.
    """
    try:
        top = BeamlineValues.model_validate(values if isinstance(values, dict) else {})
    except ValidationError as exc:
        if not isinstance(values, dict):
            return [], f"not a mapping (got {type(values).__name__})"
        return [], _problem(exc)
    iocs = top.epicsConfiguration.get("iocs")
    if not isinstance(iocs, list):
        return [], "missing key 'epicsConfiguration.iocs' (a list)"
    records: list[DeviceRecord] = []
    taken: set[str] = set()

    def add(rec: DeviceRecord) -> None:
        if rec.name in taken:  # as infn_ophyd_hal: <ioc>_<device> on a clash
            rec.name = f"{rec.ioc}_{rec.name}"
        if rec.name in taken:
            log.error("device %s of IOC %s: name already taken; skipped", rec.name, rec.ioc)
            return
        taken.add(rec.name)
        records.append(rec)

    for i, raw in enumerate(iocs):
        if not isinstance(raw, dict):
            add(
                DeviceRecord(
                    f"iocs[{i}]",
                    f"iocs[{i}]",
                    "",
                    "",
                    "",
                    {},
                    DeviceState.FAILED,
                    f"iocs[{i}]: not a mapping",
                )
            )
            continue
        if "devgroup" not in raw:  # not a device IOC (as infn_ophyd_hal)
            continue
        ioc_name = str(raw.get("name") or f"iocs[{i}]")
        try:
            ioc = IocEntry.model_validate(raw)
        except ValidationError as exc:
            add(
                DeviceRecord(
                    ioc_name,
                    ioc_name,
                    str(raw.get("devgroup", "")),
                    str(raw.get("devtype", "")),
                    str(raw.get("iocprefix", "")),
                    {},
                    DeviceState.FAILED,
                    f"IOC {ioc_name!r}: {_problem(exc)}",
                )
            )
            continue
        base = {k: v for k, v in raw.items() if k != "devices"}
        if not ioc.devices:
            add(
                DeviceRecord(
                    ioc.name,
                    ioc.name,
                    ioc.devgroup,
                    ioc.devtype,
                    ioc.iocprefix,
                    {**base, "iocname": ioc.name},
                    DeviceState.DISABLED if ioc.disable else DeviceState.PENDING,
                )
            )
            continue
        for dev in ioc.devices:
            root = f"{ioc.iocprefix}:{ioc.iocroot}" if ioc.iocroot else ioc.iocprefix
            config = {**base, "iocname": ioc.name, **dev.model_dump(exclude_unset=True)}
            add(
                DeviceRecord(
                    dev.name,
                    ioc.name,
                    ioc.devgroup,
                    dev.devtype or ioc.devtype,
                    f"{root}:{dev.name}",
                    config,
                    DeviceState.DISABLED if ioc.disable or dev.disable else DeviceState.PENDING,
                )
            )
    return records, None


class Devices(Mapping[str, Any]):
    """The device registry: a read-only mapping of the devices that were built.

    Iteration and ``get`` see only usable devices (``ok`` or ``disconnected``:
    ophyd reconnects by itself). Thread-safe: plugins call it from the loop
    and from worker threads.
    """

    def __init__(self, config: Path | None, *, enabled: bool = True) -> None:
        self.config = config
        self.enabled = enabled and config is not None
        self.error: str | None = None
        self.control_layer: str | None = None
        self.records: dict[str, DeviceRecord] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._closed = False
        self.reason: str | None
        if not enabled:
            self.reason = "IOCMNG_DISABLE_OPHYD=true"
        elif config is None:
            self.reason = "IOCMNG_BEAMLINE_CONFIG is not set"
        else:
            self.reason = None
        if not self.enabled:
            self._done.set()

    # -- Mapping -------------------------------------------------------------------------
    def _usable(self) -> dict[str, Any]:
        with self._lock:
            return {
                n: r.device
                for n, r in self.records.items()
                if r.state in (DeviceState.OK, DeviceState.DISCONNECTED)
            }

    def __getitem__(self, name: str) -> Any:
        return self._usable()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._usable())

    def __len__(self) -> int:
        return len(self._usable())

    def __bool__(self) -> bool:  # a registry is never "no registry", even before builds finish
        return True

    # -- start-up ----------------------------------------------------------------------------
    def start(self) -> None:
        """Read and validate the values.yaml now, build the devices in the background."""
        if not self.enabled:
            log.info("ophyd devices off: %s", self.reason)
            return
        assert self.config is not None
        try:
            values = yaml.safe_load(Path(self.config).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            self._fail_all(
                f"IOCMNG_BEAMLINE_CONFIG={str(self.config)!r}: cannot read it as YAML: {exc}"
            )
            return
        records, error = plan(values)
        if error:
            self._fail_all(f"IOCMNG_BEAMLINE_CONFIG={str(self.config)!r}: {error}")
            return
        self.records = {r.name: r for r in records}
        for r in records:
            if r.state == DeviceState.FAILED:
                log.error("device %s: %s", r.name, r.reason)
        threading.Thread(target=self._build_all, name="iocmng:devices", daemon=True).start()

    def _fail_all(self, message: str) -> None:
        self.error = message
        log.error("no ophyd devices: %s", message)
        self._done.set()

    def _import(self) -> Any:
        """Import infn_ophyd_hal on the chosen ophyd control layer; None (and `error`) without the extra."""
        layer = os.environ.get("OPHYD_CONTROL_LAYER", "").lower() or CONTROL_LAYER
        os.environ.setdefault("OPHYD_CONTROL_LAYER", layer)  # ophyd picks its layer at import
        try:
            import ophyd
            from infn_ophyd_hal import DeviceFactory

            if ophyd.cl.name != layer:  # ophyd was imported before us (e.g. by a plugin)
                ophyd.set_cl(layer)
        except ImportError as exc:
            self.error = f"the ophyd extra is not installed (pip install 'iocmng[ophyd]'): {exc}"
            return None
        self.control_layer = ophyd.cl.name
        if self.control_layer == "pyepics":
            log.warning(
                "OPHYD_CONTROL_LAYER=pyepics: devices cannot reach PVs served by this process (decision 0007)"
            )
        return DeviceFactory()

    def _build_all(self) -> None:
        try:
            factory = self._import()
            pending = [r for r in self.records.values() if r.state == DeviceState.PENDING]
            if factory is None:
                log.error("no ophyd devices: %s", self.error)
                with self._lock:
                    for r in pending:
                        r.state, r.reason = DeviceState.FAILED, f"device {r.name!r}: {self.error}"
                return
            work: queue.SimpleQueue[DeviceRecord | None] = queue.SimpleQueue()
            for r in pending:
                work.put(r)
            threads = []
            for i in range(min(BUILDERS, len(pending))):
                work.put(None)
                t = threading.Thread(
                    target=self._builder,
                    args=(factory, work),
                    name=f"iocmng:device-{i}",
                    daemon=True,
                )
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
            ok = sum(r.state == DeviceState.OK for r in self.records.values())
            log.info(
                "ophyd devices (%s layer): %d ok of %d configured",
                self.control_layer,
                ok,
                len(self.records),
            )
        finally:
            self._done.set()

    def _builder(self, factory: Any, work: queue.SimpleQueue[DeviceRecord | None]) -> None:
        while (rec := work.get()) is not None:
            if self._closed:
                return
            state, reason, device, cls_name = self._build(factory, rec)
            with self._lock:
                rec.state, rec.reason, rec.device, rec.device_class = (
                    state,
                    reason,
                    device,
                    cls_name,
                )
            if state == DeviceState.FAILED:
                log.error("%s", reason)
            elif state == DeviceState.DISCONNECTED:
                log.warning(
                    "device %s (%s) built but not connected yet: %s", rec.name, rec.prefix, reason
                )

    @staticmethod
    def resolve(factory: Any, group: str, dtype: str) -> type | str:
        """The device class for group/type (infn_ophyd_hal's order: exact, then the group's
        ``generic``), or a message saying what is known."""
        known: dict[tuple[str, str], type] = getattr(factory, "_device_map", {})
        cls = known.get((group, dtype)) or known.get((group, "generic"))
        if cls is not None:
            return cls
        groups = sorted({g for g, _ in known})
        if group not in groups:
            return f"unknown devgroup {group!r} (known: {', '.join(groups)})"
        types = sorted(t for g, t in known if g == group)
        return f"unknown devtype {dtype!r} for devgroup {group!r} (known: {', '.join(types)})"

    def _build(
        self, factory: Any, rec: DeviceRecord
    ) -> tuple[DeviceState, str | None, Any, str | None]:
        cls = self.resolve(factory, rec.group, rec.type)
        if isinstance(cls, str):
            return DeviceState.FAILED, f"device {rec.name!r} (IOC {rec.ioc!r}): {cls}", None, None
        kwargs: dict[str, Any] = {"prefix": rec.prefix, "name": rec.name, "config": rec.config}
        if "poi" in rec.config or "iocinit" in rec.config:
            kwargs["poi"] = rec.config.get("poi", rec.config.get("iocinit", []))
        t0 = time.monotonic()
        try:
            device = cls(**kwargs)
        except Exception as exc:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return (
                DeviceState.FAILED,
                f"device {rec.name!r} ({rec.group}/{rec.type} {cls.__name__}, IOC {rec.ioc!r}, "
                f"prefix {rec.prefix}): {what}",
                None,
                cls.__name__,
            )
        log.debug("built %s (%s) in %.2f s", rec.name, cls.__name__, time.monotonic() - t0)
        wait = getattr(device, "wait_for_connection", None)
        if callable(wait):
            try:
                wait(timeout=CONNECT_TIMEOUT)
            except Exception as exc:
                return (
                    DeviceState.DISCONNECTED,
                    f"device {rec.name!r}: IOC {rec.ioc!r} not reachable: {exc}",
                    device,
                    cls.__name__,
                )
        return DeviceState.OK, None, device, cls.__name__

    async def ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Wait (bounded, without blocking the loop) until every build has finished."""
        import asyncio

        deadline = time.monotonic() + timeout
        while not self._done.is_set():
            if time.monotonic() >= deadline:
                still = [n for n, r in self.records.items() if r.state == DeviceState.PENDING]
                log.warning(
                    "devices still being built after %.0f s: %s (plugins start without them)",
                    timeout,
                    ", ".join(still),
                )
                return False
            await asyncio.sleep(0.05)
        return True

    # -- reporting / shut-down ------------------------------------------------------------
    def listing(self) -> dict[str, Any]:
        """The ``GET /api/v1/devices`` document."""
        with self._lock:
            devices = [r.info() for _, r in sorted(self.records.items())]
        return {
            "enabled": self.enabled,
            "reason": self.reason,
            "config": str(self.config) if self.config else None,
            "control_layer": self.control_layer,
            "error": self.error,
            "devices": devices,
        }

    def close(self) -> None:
        """Destroy the built devices and stop the CA client threads (called once at stop)."""
        self._closed = True
        with self._lock:
            built = [r.device for r in self.records.values() if r.device is not None]
        for device in built:
            destroy = getattr(device, "destroy", None)
            if callable(destroy):
                try:
                    destroy()
                except Exception as exc:  # best effort: the process is going away
                    log.debug("destroying %s: %s", getattr(device, "name", device), exc)
        if self.control_layer == "caproto":
            try:
                from caproto.threading.pyepics_compat import PV

                PV.default_context().disconnect(wait=False)
            except Exception as exc:
                log.debug("caproto context disconnect: %s", exc)
