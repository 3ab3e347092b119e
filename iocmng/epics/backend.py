"""The record backend: what the runtime needs of the records of a plan.

Two implementations: the softioc bridge (:class:`iocmng.epics.ioc.IocBridge`,
real EPICS records served over CA and PVA) and an in-memory fake for tests
(:class:`iocmng.testing.FakeBackend`, no EPICS). Both derive from :class:`RecordBackend`, build the records of a
:class:`~iocmng.epics.plan.RecordPlan` and hand back a :class:`Records`
addressed by short name. Pure: no softioc import, so a module can be typed
against the backend without pulling EPICS in.

Life of a backend: :meth:`RecordBackend.create` for every plugin of a
generation, then :meth:`RecordBackend.start` once (the softioc bridge runs
``iocInit`` there; records cannot be created after it). A client's write to a
writable record calls ``on_input(short, value)``; a write of 1 to RUN (a
triggered task) awaits ``on_run()`` and completes when that returns.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from .plan import Alarm, RecordPlan, record_value

#: Called with (short name, new value) when a client writes a writable record.
InputHandler = Callable[[str, Any], Awaitable[None] | None]
#: Awaited when a client writes 1 to RUN; the write completes when it returns.
RunHandler = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Callbacks:
    """What a plugin's writable records call: ``on_input`` for every client write,
    ``on_run`` (triggered tasks) for RUN=1."""

    on_input: InputHandler
    on_run: RunHandler | None = None


#: The records type a backend hands back.
R = TypeVar("R", bound="Records")


@runtime_checkable
class Records(Protocol):
    """The live records of one plugin, addressed by short name."""

    #: ``<prefix>:<segment>``: every record is ``<prefix>:<short>``.
    prefix: str
    #: True once the backend has started (the records are served).
    live: bool

    def names(self) -> list[str]:
        """The full record names, in plan order."""
        ...

    def shorts(self) -> list[str]:
        """The short names, in plan order."""
        ...

    def __contains__(self, short: object) -> bool:
        """Whether ``short`` is a record of this plugin."""
        ...

    def type_of(self, short: str) -> str:
        """How ``short`` holds its value: float, int, bool, string or array."""
        ...

    def set(self, short: str, value: Any) -> None:
        """Write and process a record, as the plugin or iocmng does (converted to its type)."""
        ...

    def set_quiet(self, short: str, value: Any) -> None:
        """Set a writable record's value without processing it (RUN, CLEAR, RESET back to 0)."""
        ...

    def get(self, short: str) -> Any:
        """The record's current value."""
        ...

    def force_alarm(self, short: str, alarm: Alarm | None) -> None:
        """Raise ``alarm`` on a read-only record from now on (None: stop), e.g. LINK/INVALID."""
        ...


@dataclass
class RecordTable:
    """One plugin's records by short name, with their value types: the part of
    :class:`Records` that the softioc bridge and the in-memory fake share. Each
    record object has ``set(value)`` and ``get()``."""

    prefix: str  # <prefix>:<NAME>
    records: dict[str, Any] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    live: bool = False  # attached to a running IOC
    #: Short names of the records clients may write (inputs, ENABLE, RUN, CLEAR, RESET).
    writable: set[str] = field(default_factory=set)

    def names(self) -> list[str]:
        return [f"{self.prefix}:{short}" for short in self.records]

    def shorts(self) -> list[str]:
        return list(self.records)

    def __contains__(self, short: object) -> bool:
        return short in self.records

    def _record(self, short: str) -> Any:
        try:
            return self.records[short]
        except KeyError:
            raise KeyError(
                f"{short!r} is not a PV of this plugin (known: {', '.join(self.records)})"
            ) from None

    def type_of(self, short: str) -> str:
        self._record(short)
        return self.types[short]

    def set(self, short: str, value: Any) -> None:
        rec = self._record(short)
        rec.set(record_value(self.types[short], value))


class RecordBackend(ABC, Generic[R]):
    """Builds the records of each plugin's plan, then serves them.

    The softioc bridge and the in-memory fake derive from it: :meth:`create`
    (shared) checks the plan and hands it to the backend's own :meth:`_build`;
    :meth:`start` serves what was built."""

    #: The service's PV prefix.
    prefix: str
    #: ``iocmng-run --prefix P``: one plugin whose records are ``P:<PV>``; plans for it
    #: are made with ``plan(..., exact=True)``.
    exact: bool
    #: True after :meth:`start`: the record set is frozen.
    started: bool

    def __init__(self, prefix: str, *, exact: bool = False) -> None:
        self.prefix = prefix
        self.exact = exact
        self.started = False
        self.plugins: dict[str, R] = {}

    def create(
        self,
        plan: RecordPlan,
        *,
        on_input: InputHandler,
        on_run: RunHandler | None = None,
        restored: Mapping[str, Any] | None = None,
    ) -> R:
        """Build the records of ``plan`` (before :meth:`start` only). ``restored``
        holds saved values of the autosaved records (inputs, ENABLE) by short name."""
        check_plan(plan, self.prefix, self.exact)
        if self.started:
            raise RuntimeError(
                "the record set is frozen after iocInit; a reload is needed to add records"
            )
        out = self._build(plan, Callbacks(on_input, on_run), restored or {})
        self.plugins[plan.name] = out
        return out

    @abstractmethod
    def _build(self, plan: RecordPlan, calls: Callbacks, restored: Mapping[str, Any]) -> R:
        """The backend's records for ``plan`` (checked, the backend not started)."""

    @abstractmethod
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve every record created so far (once); record callbacks run on ``loop``."""


def check_plan(plan: RecordPlan, prefix: str, exact: bool) -> None:
    """Refuse a plan made for another backend's prefix (``exact``: iocmng-run's one-plugin
    prefix, records ``<prefix>:<PV>``)."""
    if plan.prefix != prefix or (exact and plan.base != prefix):
        raise ValueError(
            f"the plan of {plan.name} is for records under {plan.base}, not this backend's "
            f"{prefix}{'' if exact else ':<NAME>'}"
        )
