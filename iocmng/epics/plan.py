"""The record plan of a plugin: pure, no EPICS, no I/O.

One function, :func:`plan`, turns what is known before a plugin runs (the
service prefix, its name, its kind, its ``config.yaml`` and the registered
parameter overrides) into a frozen :class:`RecordPlan`: the PV base, the mode,
the parameters the plugin will see in ``self.parameters``, and every record
to build with its full name. Validation, the startup view, the dashboard, the
``.bob`` screens, the runtime and the softioc bridge all read the same plan,
so a PV name or a merged parameter cannot differ between them.

Also here, because every one of them shows or writes them: the STATUS values
(:class:`TaskStatus`, :class:`JobStatus`; the mbbi state strings and
severities derive from them), with EPICS's alarm names re-exported from
:mod:`iocmng.epics.alarm`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from ..config.models import (
    TASK_MODES,
    PluginConfig,
    PVSpec,
    coerce_value,
    deep_merge,
    merged_parameters,
)
from ..errors import ConfigError
from .alarm import LINK_ALARM, SYS_CONN_ALARM, Alarm, AlarmStatus, Severity

__all__ = [
    "DEFAULT_PV_NAMES",
    "JOB_STATES",
    "LINK_ALARM",
    "MAX_RECORD_NAME",
    "MAX_STRING",
    "RECORD_TYPES",
    "SYS_CONN_ALARM",
    "TASK_STATES",
    "Alarm",
    "AlarmStatus",
    "JobStatus",
    "RecordPlan",
    "RecordSpec",
    "Severity",
    "TaskStatus",
    "base_of",
    "default_records",
    "logic_records",
    "merge_parameters",
    "plan",
    "plan_records",
    "plugin_prefix",
    "record_value",
    "status_enum",
    "status_fields",
    "status_labels",
    "truncate",
]

#: EPICS record names are at most 60 characters (PVNAME_STRINGSZ - 1).
MAX_RECORD_NAME = 60
#: A stringin/stringout holds 39 characters plus the terminating NUL.
MAX_STRING = 39


# -- STATUS (alarm names: iocmng.epics.alarm) ----------------------------------------------------
class TaskStatus(IntEnum):
    """A task's STATUS (an mbbi): the value is the record's VAL, the name its state string."""

    INIT = 0
    RUN = 1
    PAUSED = 2
    END = 3
    ERROR = 4

    @property
    def label(self) -> str:
        """The mbbi state string (``ZRST``, ``ONST``...)."""
        return self.name

    @property
    def severity(self) -> Severity:
        """The alarm severity of this state (``ZRSV``, ``ONSV``...)."""
        return Severity.MAJOR if self is TaskStatus.ERROR else Severity.NO_ALARM


class JobStatus(IntEnum):
    """A job's STATUS (an mbbi): the value is the record's VAL, the name its state string."""

    IDLE = 0
    RUNNING = 1
    SUCCESS = 2
    FAILED = 3

    @property
    def label(self) -> str:
        """The mbbi state string (``ZRST``, ``ONST``...)."""
        return self.name

    @property
    def severity(self) -> Severity:
        """The alarm severity of this state (``ZRSV``, ``ONSV``...)."""
        return Severity.MAJOR if self is JobStatus.FAILED else Severity.NO_ALARM


#: The STATUS state strings of a task and of a job, in value order (the names iocmng always had).
TASK_STATES: tuple[str, ...] = tuple(s.label for s in TaskStatus)
JOB_STATES: tuple[str, ...] = tuple(s.label for s in JobStatus)


#: The mbbi fields of STATUS's states, by value: ZRST/ZRSV, ONST/ONSV...
_MBB = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV")


def status_fields(kind: str) -> dict[str, str]:
    """STATUS's mbbi fields: each state's string (``ZRST``...) and, when it alarms, its severity (``ZRSV``...)."""
    fields = {}
    for state in status_enum(kind):
        fields[_MBB[state] + "ST"] = state.label
        if state.severity != Severity.NO_ALARM:
            fields[_MBB[state] + "SV"] = state.severity.name
    return fields


def status_enum(kind: str) -> type[TaskStatus] | type[JobStatus]:
    """The STATUS enum of a plugin of ``kind`` (``task`` or ``job``)."""
    return JobStatus if kind == "job" else TaskStatus


def status_labels(kind: str) -> tuple[str, ...]:
    """The STATUS state strings of a plugin of ``kind``, in value order."""
    return JOB_STATES if kind == "job" else TASK_STATES


def truncate(text: str, limit: int = MAX_STRING) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    raw = str(text).replace("\n", " ").encode("utf-8")
    if len(raw) <= limit:
        return str(text).replace("\n", " ")
    return raw[:limit].decode("utf-8", errors="ignore")


def record_value(pv_type: str, value: Any) -> Any:
    """``value`` as a record of ``pv_type`` holds it: strings cut to fit, arrays as given,
    numbers and bools converted (``ValueError``/``TypeError`` if they cannot be)."""
    if pv_type == "string":
        return truncate(value)
    if pv_type == "array":
        return value
    return coerce_value(pv_type, value)


# -- records -------------------------------------------------------------------------------------
#: Record types by PV type, for writable (operator-written) and read-only records.
RECORD_TYPES = {
    True: {"float": "ao", "int": "longout", "bool": "bo", "string": "stringout"},
    False: {"float": "ai", "int": "longin", "bool": "bi", "string": "stringin"},
}


@dataclass(frozen=True)
class RecordSpec:
    """One record to build: its short name, direction and field values."""

    short: str
    writable: bool  # an EPICS output record (operators write it)
    spec: PVSpec
    autosave: bool = False
    #: "" (a plain PV), "conn" (a 0/1 waveform, one element per link), "names"
    #: (a long string: the links' names, in full) or "pulse" (CLEAR/RESET: back to 0 after each write)
    special: str = ""
    count: int = 1  # elements of a "conn" waveform

    @property
    def record_type(self) -> str:
        """The EPICS record type the bridge builds (mbbi, ai, ao, longin, ..., waveform).

        CONN_* and CONN_*_NAMES are both waveforms: pythonSoftIOC's ``longStringIn``
        is a waveform of CHAR (the dashboard has called the latter ``lsi``)."""
        if self.short == "STATUS":
            return "mbbi"
        if self.special in ("conn", "names"):
            return "waveform"
        return RECORD_TYPES[self.writable][self.spec.type]

    @property
    def value_type(self) -> str:
        """How the record's value is held: the PV type, ``int`` for STATUS, ``array`` for a CONN_* waveform."""
        if self.short == "STATUS":
            return "int"
        if self.special == "conn":
            return "array"
        if self.special == "names":
            return "string"
        return self.spec.type


def default_records(kind: str, mode: str) -> list[RecordSpec]:
    """The default PVs of SPEC §5 for a plugin of ``kind`` and ``mode``."""
    if kind == "job":
        return [
            RecordSpec("STATUS", False, PVSpec(type="int")),
            RecordSpec("MESSAGE", False, PVSpec(type="string")),
        ]
    recs = [
        RecordSpec(
            "ENABLE",
            True,
            PVSpec(type="bool", value=1, znam="Disabled", onam="Enabled"),
            autosave=True,
        ),
        RecordSpec("STATUS", False, PVSpec(type="int")),
        RecordSpec("MESSAGE", False, PVSpec(type="string")),
    ]
    if mode == "triggered":
        recs.append(RecordSpec("RUN", True, PVSpec(type="bool", value=0, znam="Idle", onam="Run")))
    else:
        recs.append(RecordSpec("CYCLE_COUNT", False, PVSpec(type="int")))
    return recs


#: Records iocmng adds: the defaults of SPEC §5, VERSION, and those of plugins with logic or links.
DEFAULT_PV_NAMES = frozenset(
    {
        "ENABLE",
        "STATUS",
        "MESSAGE",
        "CYCLE_COUNT",
        "RUN",
        "VERSION",
        "CLEAR",
        "RESET",
        "CONN_INP",
        "CONN_OUT",
        "CONN_INP_NAMES",
        "CONN_OUT_NAMES",
    }
)


def plugin_prefix(prefix: str, name: str, config: PluginConfig | None = None) -> str:
    """``<prefix>:<segment>``: the segment is config.yaml's ``prefix:``, else the name in upper case."""
    segment = config.prefix if config is not None and config.prefix else name.upper()
    return f"{prefix}:{segment}"


def base_of(records: Sequence[str]) -> str | None:
    """The ``<prefix>:<segment>`` of a plugin's full record names (every plugin has STATUS)."""
    for rec in records:
        if rec.endswith(":STATUS"):
            return rec[: -len(":STATUS")]
    return None


def logic_records(kind: str, config: PluginConfig) -> list[RecordSpec]:
    """VERSION, CLEAR/RESET and the CONN_* records a config asks for.

    VERSION exists when config.yaml's ``parameters.version`` is set, with that
    value; the runtime writes the merged ``version`` into it when the plugin starts.
    """
    recs = []
    version = config.parameters.get("version")
    if version is not None:
        recs.append(RecordSpec("VERSION", False, PVSpec(type="string", value=str(version))))
    if kind == "task" and config.has_logic:
        recs.append(
            RecordSpec(
                "CLEAR", True, PVSpec(type="bool", znam="Idle", onam="Clear"), special="pulse"
            )
        )
        recs.append(
            RecordSpec(
                "RESET", True, PVSpec(type="bool", znam="Idle", onam="Reset"), special="pulse"
            )
        )
    for tag, section in (("INP", config.pvs.inputs), ("OUT", config.pvs.outputs)):
        wired = [n for n, s in section.items() if s.link is not None]
        if wired:
            recs.append(
                RecordSpec(
                    f"CONN_{tag}", False, PVSpec(type="int"), special="conn", count=len(wired)
                )
            )
            recs.append(
                RecordSpec(
                    f"CONN_{tag}_NAMES",
                    False,
                    PVSpec(type="string", value=" ".join(wired)),
                    special="names",
                )
            )
    return recs


def _record_specs(base: str, kind: str, mode: str, config: PluginConfig) -> list[RecordSpec]:
    """All records of one plugin under ``base``, checked: no collision with defaults, names fit EPICS."""
    errors = []
    for section, pvs in (("inputs", config.pvs.inputs), ("outputs", config.pvs.outputs)):
        for pv in pvs:
            if pv in DEFAULT_PV_NAMES:
                errors.append(
                    {
                        "loc": f"pvs.{section}.{pv}",
                        "msg": f"collides with the default PV {pv}; choose another name",
                    }
                )
    recs = default_records(kind, mode)
    recs += logic_records(kind, config)
    recs += [
        RecordSpec(k, v.link is None, v, autosave=v.link is None)
        for k, v in config.pvs.inputs.items()
    ]
    recs += [RecordSpec(k, False, v) for k, v in config.pvs.outputs.items()]
    for rec in recs:
        full = f"{base}:{rec.short}"
        if len(full) > MAX_RECORD_NAME:
            section = "inputs" if rec.short in config.pvs.inputs else "outputs"
            loc = f"pvs.{section}.{rec.short}" if rec.short not in DEFAULT_PV_NAMES else "name"
            errors.append(
                {
                    "loc": loc,
                    "msg": f"PV name {full!r} is {len(full)} characters, over the EPICS limit of {MAX_RECORD_NAME}; "
                    "shorten the PV, plugin name or prefix",
                }
            )
    if errors:
        raise ConfigError("config.yaml", errors)
    return recs


def plan_records(
    prefix: str, name: str, kind: str, mode: str, config: PluginConfig
) -> list[RecordSpec]:
    """All records of one plugin, checked: no collision with defaults, names fit EPICS.

    Raises ConfigError naming the PV and the fix. A wired input is a read-only
    mirror of its external PV (operators write the external PV itself).
    Prefer :func:`plan`, which also merges the parameters and names the records.
    """
    return _record_specs(plugin_prefix(prefix, name, config), kind, mode, config)


# -- the plan --------------------------------------------------------------------------------------
def merge_parameters(
    kind: str, config: PluginConfig, overrides: Mapping[str, Any] | None, where: str = "parameters"
) -> tuple[str, dict[str, Any]]:
    """The one rule for a plugin's parameters: ``(mode, self.parameters)``.

    The overrides are deep-merged into config.yaml's ``parameters:`` and the
    scheduling keys validated (``interval``, ``timeout``... a bad value is a
    ConfigError at ``where``) for tasks and jobs alike. A task gets the
    validated keys (``mode`` and ``interval`` always, ``version``/``pva``/``timeout``
    when given) and its mode must be a task mode; a job gets the merge as
    written (no keys added) and mode ``job``.
    """
    params = merged_parameters(config, dict(overrides or {}), where=where)
    if kind == "job":
        return "job", deep_merge(config.parameters, dict(overrides or {}))
    if params.mode not in TASK_MODES:  # 'job' (iocmng 2.7.9) is for jobs only
        raise ConfigError(
            "parameters",
            [
                {
                    "loc": "parameters.mode",
                    "msg": f"{params.mode!r} is not a task mode; "
                    "use one of " + ", ".join(TASK_MODES),
                }
            ],
        )
    return params.mode, params.as_dict()


@dataclass(frozen=True)
class RecordPlan:
    """Everything about a plugin's records that is known before it runs."""

    prefix: str  # the service's PV prefix
    name: str  # the plugin's name
    kind: str  # task | job
    base: str  # <prefix>:<segment>: every record is <base>:<short>
    mode: str  # continuous | triggered | reactive | job
    #: The merged parameters (the plugin's ``self.parameters``), read-only;
    #: :meth:`parameters_dict` gives a fresh copy to hand out.
    parameters: Mapping[str, Any]
    records: tuple[RecordSpec, ...]

    @property
    def shorts(self) -> tuple[str, ...]:
        """The records' short names, in plan order."""
        return tuple(r.short for r in self.records)

    @property
    def names(self) -> tuple[str, ...]:
        """The records' full names ``<base>:<short>``, in plan order."""
        return tuple(f"{self.base}:{r.short}" for r in self.records)

    full_names = names

    def full(self, short: str) -> str:
        """The full name of the record ``short``."""
        return f"{self.base}:{short}"

    def spec(self, short: str) -> RecordSpec:
        """The record ``short`` (KeyError naming the known ones if there is none)."""
        for rec in self.records:
            if rec.short == short:
                return rec
        raise KeyError(f"{short!r} is not a PV of {self.name} (known: {', '.join(self.shorts)})")

    def __contains__(self, short: object) -> bool:
        return any(r.short == short for r in self.records)

    @property
    def writable(self) -> frozenset[str]:
        """Short names of the records clients may write (inputs, ENABLE, RUN, CLEAR, RESET)."""
        return frozenset(r.short for r in self.records if r.writable)

    @property
    def default_pvs(self) -> tuple[str, ...]:
        """Short names of the records iocmng adds (not declared in config.yaml), in plan order."""
        return tuple(s for s in self.shorts if s in DEFAULT_PV_NAMES)

    @property
    def states(self) -> tuple[str, ...]:
        """STATUS's state strings."""
        return status_labels(self.kind)

    @property
    def status(self) -> type[TaskStatus] | type[JobStatus]:
        """STATUS's enum."""
        return status_enum(self.kind)

    def parameters_dict(self) -> dict[str, Any]:
        """A fresh, mutable deep copy of the merged parameters."""
        return deep_merge(dict(self.parameters), {})


def plan(
    prefix: str,
    name: str,
    kind: str,
    config: PluginConfig,
    overrides: Mapping[str, Any] | None = None,
    *,
    where: str = "parameters",
    exact: bool = False,
) -> RecordPlan:
    """The record plan of plugin ``name`` of ``kind`` (``task`` or ``job``) under the service ``prefix``.

    ``overrides`` are the registered (REST/CLI/boot list) parameters, merged by
    :func:`merge_parameters`. ``where`` names the config file in errors about
    the parameters. ``exact`` (``iocmng-run --prefix P``) puts the records at
    ``P:<PV>``, with no plugin segment. Raises ConfigError (bad parameters, a
    task mode that is not one, a PV colliding with a default, a name over 60
    characters); does no I/O.
    """
    if kind not in ("task", "job"):
        raise ValueError(f"kind must be 'task' or 'job', not {kind!r}")
    mode, parameters = merge_parameters(kind, config, overrides, where)
    base = prefix if exact else plugin_prefix(prefix, name, config)
    records = _record_specs(base, kind, mode, config)
    return RecordPlan(
        prefix=prefix,
        name=name,
        kind=kind,
        base=base,
        mode=mode,
        parameters=MappingProxyType(parameters),
        records=tuple(records),
    )
