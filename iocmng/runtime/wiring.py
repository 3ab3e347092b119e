"""A plugin's links and logic, applied to its records.

:class:`Wiring` joins the pieces of one plugin: its :class:`~iocmng.declarative.links.LinkSet`
(values and connection states of external PVs), its compiled
:class:`~iocmng.declarative.logic.Logic` (rules, transforms, latches), and its records
(wired inputs mirror their external PV; CONN_INP/CONN_OUT show the
connections; outputs computed from a disconnected link are raised to
LINK/INVALID alarm; SYS_CONN, if declared, summarises). The runtime calls
:meth:`cycle` before each continuous or triggered cycle; a reactive task
evaluates (only what changed) on its trigger inputs, one loop turn after the change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

from ..config.models import SYS_CONN, PluginConfig, coerce_value
from ..declarative.links import LinkSet
from ..declarative.logic import BUFFER_SUFFIX, Logic, Outcome
from ..epics.plan import LINK_ALARM, SYS_CONN_ALARM
from .handle import PluginHandle
from .services import RuntimeServices

#: Called when a wired input with ``trigger: true`` changes: ``(name, value, old)``.
OnTrigger = Callable[[str, Any, Any], None]

log = logging.getLogger("iocmng.wiring")


class Wiring:
    """Links, logic and their records for one plugin.

    ``services`` are the runtime's (events, logger, PVA client); ``on_trigger`` runs
    the plugin's input hook when a wired input with ``trigger: true`` changes.
    """

    def __init__(
        self,
        h: PluginHandle,
        config: PluginConfig,
        logic: Logic,
        default_protocol: str,
        services: RuntimeServices,
        on_trigger: OnTrigger | None = None,
    ) -> None:
        self.h = h
        self.services = services
        self.on_trigger = on_trigger
        self.config = config
        self.logic = logic
        self.reactive = h.mode == "reactive"
        wired = {n: (s, "input") for n, s in config.pvs.inputs.items() if s.link}
        wired |= {n: (s, "output") for n, s in config.pvs.outputs.items() if s.link}
        params = h.params
        self.links = LinkSet(
            h.name,
            wired,
            default_protocol,
            interval=float(params.get("interval", 1.0)),
            timeout=float(params.get("timeout", 5.0)),
            on_value=self.on_link_value,
            on_connection=self.on_connection,
            pva_context=services.pva_context,
        )
        triggers = {n for n, s in config.pvs.inputs.items() if s.link and s.trigger}
        #: reactive tasks evaluate on changes of these (all wired inputs if none says trigger)
        self.reactive_on = triggers or {n for n, s in config.pvs.inputs.items() if s.link}
        self.buffers: dict[str, Any] = {
            n: lk.buffer for n, lk in self.links.links.items() if lk.buffer is not None
        }
        self._local_buffers: dict[str, collections.deque[Any]] = {
            n: collections.deque(maxlen=s.buffer_size)
            for n, s in config.all_pvs().items()
            if s.buffer_size and not s.link
        }
        self.buffers |= self._local_buffers
        self._params = {k: v for k, v in params.items() if isinstance(k, str)}
        self._local_names = [n for n in config.all_pvs() if n not in self.links.links]
        self._pending: set[str] = set()
        self._scheduled = False
        self._alarmed: set[str] = set()
        self.evaluations = 0

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.links.start()
        self._refresh_connections()

    async def close(self) -> None:
        await self.links.close()

    # -- values for expressions --------------------------------------------------------------------
    def env(self) -> dict[str, Any]:
        h = self.h
        records = h.records
        assert records is not None
        env = dict(self._params)
        links = self.links.links
        for name, link in links.items():
            env[name] = link.value
        for name in self._local_names:
            env[name] = records.get(name)
        for name, buf in self.buffers.items():
            env[f"{name}{BUFFER_SUFFIX}"] = list(buf)
        return env

    def note_local(self, name: str, value: Any) -> None:
        """A non-wired PV changed (an operator's write or the plugin's set_pv)."""
        buf = self._local_buffers.get(name)
        if buf is not None:
            buf.append(value)

    # -- evaluation ---------------------------------------------------------------------------------
    def cycle(self) -> list[tuple[str, Exception]]:
        """Full evaluation (continuous and triggered cycles); returns the expression errors."""
        if self.logic.empty:
            return []
        return self.apply(self.logic.evaluate(self.env()))

    def changed(self, names: set[str]) -> None:
        """Reactive tasks: evaluate what depends on ``names``, one loop turn from now (coalesced)."""
        if not self.reactive or self.logic.empty:
            return
        self._pending |= names
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        names, self._pending = self._pending, set()
        h = self.h
        if not h.enabled or h.records is None or self.links.closed:
            return
        try:
            errors = self.apply(self.logic.evaluate(self.env(), changed=names))
        except (
            Exception
        ) as exc:  # a loop callback: an error here must become the plugin's, not the loop's
            errors = [("rules", exc)]
        if errors:
            where, error = errors[0]
            h.fail(error, where)
        else:
            h.cycle_ok()

    def apply(self, outcome: Outcome) -> list[tuple[str, Exception]]:
        h = self.h
        records = h.records
        assert records is not None
        self.evaluations += 1
        for name, value in outcome.outputs.items():
            try:
                if records.get(name) != coerce_value(records.type_of(name), value):
                    records.set(name, value)
                    self.note_local(name, value)
            except Exception as exc:  # OverflowError too (pow(2, 2000) into a float): a failed cycle, not a dead task
                outcome.errors.append((f"output {name}", exc))
        for rule, text, pv in outcome.messages:
            self.services.plugin_logger(h.name).warning("rule %s fired: %s", rule, text)
            self.services.emit("rule", plugin=h.name, rule=rule, message=text)
            if pv is not None:
                records.set(pv, text)
        for key, value in outcome.actuators:
            self.links.put_soon(key, value)
        return outcome.errors

    def clear(self) -> None:
        """CLEAR: latched outputs back to their rule_defaults."""
        released = self.logic.clear()
        for name, value in released.items():
            self.h.records.set(name, value)  # type: ignore[union-attr]
        log.info("%s: CLEAR released %s", self.h.name, ", ".join(released) or "nothing")

    def reset(self) -> None:
        released = self.logic.reset()
        for name, value in released.items():
            self.h.records.set(name, value)  # type: ignore[union-attr]

    # -- link callbacks -------------------------------------------------------------------------------
    def on_link_value(self, name: str, value: Any, old: Any) -> None:
        """The LinkSet's callback: a wired PV's new value."""
        h = self.h
        if h.records is not None:  # the record mirrors the external PV (an output: its readback)
            try:
                h.records.set(name, value)
            except (TypeError, ValueError):
                pass  # e.g. an array into a scalar record: expressions still see the value
        spec = self.config.pvs.inputs.get(name)
        if spec is None or value == old:
            return
        if spec.trigger and self.on_trigger is not None:
            self.on_trigger(name, value, old)
        if name in self.reactive_on:
            self.changed({name, f"{name}{BUFFER_SUFFIX}"})

    def on_connection(self, name: str, connected: bool) -> None:
        """The LinkSet's callback: a wired PV (dis)connected."""
        level = logging.INFO if connected else logging.WARNING
        lk = self.links.links[name]
        log.log(
            level,
            "%s: link %s (%s://%s) %s",
            self.h.name,
            name,
            lk.protocol,
            lk.pv,
            "connected" if connected else "DISCONNECTED",
        )
        self._refresh_connections()
        self.services.emit("link", plugin=self.h.name, link=name, pv=lk.pv, connected=connected)
        if connected and name in self.reactive_on:  # a first value equal to the default is news too
            self.changed({name, f"{name}{BUFFER_SUFFIX}"})

    def _refresh_connections(self) -> None:
        records = self.h.records
        if records is None:
            return
        links = self.links.links
        for tag, direction in (("CONN_INP", "input"), ("CONN_OUT", "output")):
            if tag in records:
                records.set(
                    tag, [1 if links[n].connected else 0 for n in self.links.names(direction)]
                )
        down = set(self.links.disconnected())
        # Mirrors of disconnected inputs, and outputs computed from them, show LINK/INVALID.
        alarmed = {n for n in down if n in self.config.pvs.inputs} | self.logic.affected_outputs(
            down
        )
        for name in alarmed ^ self._alarmed:
            if name in records:  # the backend leaves records it cannot alarm as they are
                records.force_alarm(name, LINK_ALARM if name in alarmed else None)
        self._alarmed = alarmed
        if SYS_CONN in records:
            order = [n for n in links if n in down]
            text = "OK" if not order else f"DISCONNECTED: {', '.join(order)}"
            records.force_alarm(SYS_CONN, SYS_CONN_ALARM if order else None)
            records.set(SYS_CONN, text)
