"""Plugin ``config.yaml``: strict pydantic models, loading and parameter merging.

Every model forbids unknown keys, so a typo is an error naming the field rather
than a silently ignored setting. ``iocmng schema`` prints the JSON schema that
these models generate.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

#: A PV name part: letters, digits, ``_``, ``-`` and ``:``, starting with a letter or digit.
PV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:\-]{0,59}$")

PVType = Literal["float", "int", "string", "bool"]
#: ``job`` is what iocmng 2.7.9's job configs say; it is accepted for jobs only (and means nothing more).
Mode = Literal["continuous", "triggered", "reactive", "job"]
TASK_MODES = ("continuous", "triggered", "reactive")
LinkMode = Literal["monitor", "poll"]
LatchDir = Literal["rise", "fall", "any"]
#: iocmng 2.7.9 spelled the latch directions as transitions too.
LATCH_ALIASES = {"0->1": "rise", "1->0": "fall"}
#: A wired PV's name, with an optional ``ca://`` or ``pva://`` protocol prefix.
LINK_RE = re.compile(r"^(?:(ca|pva)://)?([^\s\\\"']{1,200})$")
#: An output of this name (type string), if declared, shows the links' connection summary.
SYS_CONN = "SYS_CONN"

CONFIG_NAMES = ("config.yaml", "config.yml")


class PVSpec(BaseModel):
    """One declared PV of a plugin (an input or an output)."""

    model_config = ConfigDict(extra="forbid")

    type: PVType = Field(
        "float",
        description="float (ai/ao), int (longin/longout), string (stringin/out), bool (bi/bo)",
    )
    value: float | int | str | bool | None = Field(
        None, description="Initial value (default 0, '' or false)"
    )
    unit: str | None = Field(None, max_length=15, description="Engineering units (EGU)")
    prec: int | None = Field(None, ge=0, le=15, description="Display precision (PREC), float only")
    low: float | None = Field(
        None, description="Display low limit (LOPR); drive low limit (DRVL) for inputs"
    )
    high: float | None = Field(
        None, description="Display high limit (HOPR); drive high limit (DRVH) for inputs"
    )
    znam: str | None = Field(None, max_length=25, description="Label of state 0 (ZNAM), bool only")
    onam: str | None = Field(None, max_length=25, description="Label of state 1 (ONAM), bool only")
    description: str | None = Field(None, max_length=40, description="Record description (DESC)")
    # -- wired PVs (links to external PVs) ----------------------------------------------
    link: str | None = Field(
        None,
        description="External PV wired to this one: NAME, ca://NAME or pva://NAME "
        "(without a prefix: CA, or PVA with parameter pva: true / IOCMNG_LINK_PROTOCOL=pva)",
    )
    link_mode: LinkMode | None = Field(
        None, description="monitor (pushed on change) or poll (read every poll_rate)"
    )
    mode: LinkMode | None = Field(None, description="Alias of link_mode (iocmng 2.7.9)")
    poll_rate: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="Seconds between reads of a polled link (default: the task's interval)",
    )
    trigger: bool = Field(
        False,
        description="A change of this wired input calls on_input_changed(name, value, old) "
        "and, in reactive mode, evaluates the rules",
    )
    buffer_size: int | None = Field(
        None, ge=1, le=100_000, description="Keep the last N values as <name>_buf for expressions"
    )
    # -- logic on outputs --------------------------------------------------------------------
    latch: bool = Field(
        False, description="Outputs: a value set by a rule holds until CLEAR or RESET"
    )
    latch_dir: LatchDir = Field(
        "rise", description="Which rule writes latch: rise (to true), fall (to false), any"
    )
    alarm_on: Literal["MAJOR", "MINOR"] | None = Field(
        None,
        description="Alarm severity raised by the record itself: "
        "bool when 1; numbers above alarm_high or below alarm_low",
    )
    alarm_high: float | None = Field(
        None, description="alarm_on threshold: alarm when the value is >= this"
    )
    alarm_low: float | None = Field(
        None, description="alarm_on threshold: alarm when the value is <= this"
    )

    @field_validator("alarm_on", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("latch_dir", mode="before")
    @classmethod
    def _latch_alias(cls, v: Any) -> Any:
        return LATCH_ALIASES.get(v, v) if isinstance(v, str) else v

    @field_validator("link")
    @classmethod
    def _check_link(cls, v: str | None) -> str | None:
        if v is not None and not LINK_RE.match(v):
            raise ValueError(
                f"link {v!r} is not a PV name (optionally prefixed ca:// or pva://), without spaces or quotes"
            )
        return v

    @property
    def wired(self) -> bool:
        return self.link is not None

    @property
    def effective_link_mode(self) -> str:
        return self.link_mode or self.mode or "monitor"

    @model_validator(mode="after")
    def _check_type_fields(self) -> PVSpec:
        if self.link_mode and self.mode and self.link_mode != self.mode:
            raise ValueError(
                f"link_mode {self.link_mode!r} and its alias mode {self.mode!r} disagree; keep one"
            )
        if self.link is None:
            for key in ("link_mode", "mode", "poll_rate"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} needs a link (the external PV to read)")
        elif self.effective_link_mode != "poll" and self.poll_rate is not None:
            raise ValueError("poll_rate applies to link_mode: poll only")
        if self.alarm_on is not None:
            if self.type == "string":
                raise ValueError("alarm_on is not allowed on type string")
            if self.type in ("float", "int") and self.alarm_high is None and self.alarm_low is None:
                if self.high is None:
                    raise ValueError("alarm_on on a number needs alarm_high and/or alarm_low")
                # iocmng 2.7.9 alarmed above the display limit `high`; keep its files working
                self.alarm_high = self.high
        if self.type not in ("float", "int") and (
            self.alarm_high is not None or self.alarm_low is not None
        ):
            raise ValueError(f"alarm_high/alarm_low are not allowed on type {self.type}")
        if (self.alarm_high is not None or self.alarm_low is not None) and self.alarm_on is None:
            raise ValueError("alarm_high/alarm_low need alarm_on (MAJOR or MINOR)")
        if self.type != "bool" and (self.znam is not None or self.onam is not None):
            raise ValueError("znam/onam are only allowed on type bool")
        if self.type != "float" and self.prec is not None:
            raise ValueError("prec is only allowed on type float")
        if self.type in ("string", "bool") and (self.low is not None or self.high is not None):
            raise ValueError(f"low/high are not allowed on type {self.type}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError("low must not be greater than high")
        self.value = coerce_value(self.type, self.value)
        return self

    def default(self) -> Any:
        return self.value


def coerce_value(pv_type: str, value: Any) -> Any:
    """Convert ``value`` to the Python type of ``pv_type`` (``None`` gives the zero value)."""
    if pv_type == "float":
        return 0.0 if value is None else float(value)
    if pv_type == "int":
        if value is None:
            return 0
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"value {value!r} is not an integer")
        return int(value)
    if pv_type == "bool":
        if value is None:
            return 0
        if isinstance(value, str):
            if value.lower() in ("1", "true", "on", "yes"):
                return 1
            if value.lower() in ("0", "false", "off", "no", ""):
                return 0
            raise ValueError(f"value {value!r} is not a boolean")
        return 1 if value else 0
    if value is None:
        return ""
    return str(value)


def _check_pv_names(pvs: dict[str, PVSpec]) -> dict[str, PVSpec]:
    for name in pvs:
        if not PV_NAME_RE.match(name):
            raise ValueError(
                f"PV name {name!r} is not a valid record-name part: use letters, digits, '_', '-' or ':', "
                "starting with a letter or digit"
            )
    return pvs


class PVsConfig(BaseModel):
    """The ``pvs:`` section."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, PVSpec] = Field(
        default_factory=dict, description="Writable by operators (output records)"
    )
    outputs: dict[str, PVSpec] = Field(
        default_factory=dict, description="Written by the plugin, read-only to clients"
    )

    _names_in = field_validator("inputs")(classmethod(lambda cls, v: _check_pv_names(v)))
    _names_out = field_validator("outputs")(classmethod(lambda cls, v: _check_pv_names(v)))

    @model_validator(mode="after")
    def _no_overlap(self) -> PVsConfig:
        both = sorted(set(self.inputs) & set(self.outputs))
        if both:
            raise ValueError(f"PV names declared both as input and output: {', '.join(both)}")
        return self


class Parameters(BaseModel):
    """The keys of ``parameters:`` that iocmng reads; any other key is the plugin's own."""

    model_config = ConfigDict(extra="allow")

    mode: Mode = Field(
        "continuous",
        description="Tasks: continuous (loop every interval), triggered (RUN PV) or "
        "reactive (rules and on_input_changed on input changes, no loop); jobs: job (optional)",
    )
    interval: float = Field(
        1.0, gt=0, le=86400, description="Seconds between cycle starts (continuous tasks)"
    )
    version: str | None = Field(None, description="Served as the plugin's VERSION PV")
    pva: bool | None = Field(
        None,
        description="Links without ca:// or pva:// use PVA (true) or CA (false); "
        "default IOCMNG_LINK_PROTOCOL",
    )
    timeout: float = Field(5.0, gt=0, le=60, description="Seconds allowed for a link read or write")

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    def as_dict(self) -> dict[str, Any]:
        """What a task's ``self.parameters`` holds: every key given, ``mode`` and
        ``interval`` always, iocmng's optional keys (version, pva, timeout) only when set."""
        return self.model_dump(
            exclude={k for k in ("version", "pva", "timeout") if k not in self.model_fields_set}
        )


class RuleSpec(BaseModel):
    """One rule: when ``condition`` is true, set ``outputs``, write ``actuators``, show ``message``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=60, description="Name of the rule (default rule-<n>)")
    condition: str = Field(
        ..., min_length=1, description="Expression; the rule fires while it is true"
    )
    message: str = Field(
        "", description="Text written (timestamped) to message_pv and the log when the rule fires"
    )
    message_pv: str | None = Field(None, description="A string output that receives the message")
    outputs: dict[str, Any] = Field(
        default_factory=dict, description="Output name -> value set while the rule fires"
    )
    actuators: dict[str, Any] = Field(
        default_factory=dict, description="Wired PV name -> value written to its link"
    )
    actuate: Literal["change", "level"] = Field(
        "change",
        description="change: write an actuator when the value to write changes; level: every evaluation",
    )


class TransformSpec(BaseModel):
    """``output = expression``, evaluated before the rules (later transforms see earlier results)."""

    model_config = ConfigDict(extra="forbid")

    output: str = Field(..., description="The declared output that receives the result")
    expression: str = Field(
        ...,
        min_length=1,
        description="Expression over inputs, outputs, parameters, "
        "<name>_buf buffers and earlier transforms",
    )


class PluginConfig(BaseModel):
    """A plugin's ``config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    prefix: str | None = Field(
        None,
        description="PV segment of the plugin: <service prefix>:<prefix>:<PV> "
        "(default: the plugin name in upper case)",
    )
    type: Literal["task", "job"] | None = Field(
        None, description="Documentation only (the class decides)"
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Defaults of self.parameters"
    )
    pvs: PVsConfig = Field(default_factory=PVsConfig, description="Declared PVs")
    arguments: PVsConfig | None = Field(
        None,
        description="The newer name of pvs: (iocmng 2.7.9); both may be "
        "used, but not for the same PV",
    )
    rules: list[RuleSpec] = Field(
        default_factory=list, description="Rules, evaluated in order every cycle"
    )
    rule_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Output values set before the rules each cycle (latched outputs keep theirs)",
    )
    transforms: list[TransformSpec] = Field(default_factory=list, description="Computed outputs")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, v: str | None) -> str | None:
        if v is not None and not PV_NAME_RE.match(v):
            raise ValueError(
                f"prefix {v!r} is not a valid PV name part: use letters, digits, '_', '-' or ':'"
            )
        return v

    @field_validator("parameters", mode="after")
    @classmethod
    def _check_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        Parameters.model_validate(value)
        return value

    @model_validator(mode="after")
    def _merge_and_check(self) -> PluginConfig:
        if self.arguments is not None:
            a, p = self.arguments, self.pvs
            both = sorted((set(a.inputs) | set(a.outputs)) & (set(p.inputs) | set(p.outputs)))
            if both:
                raise ValueError(
                    f"declared in both pvs: and arguments: {', '.join(both)}; keep each PV in one"
                )
            self.pvs = PVsConfig.model_validate(
                {"inputs": {**p.inputs, **a.inputs}, "outputs": {**p.outputs, **a.outputs}}
            )
            self.arguments = None
        check_logic_references(self)
        return self

    @property
    def mode(self) -> str:
        return Parameters.model_validate(self.parameters).mode

    def all_pvs(self) -> dict[str, PVSpec]:
        return {**self.pvs.inputs, **self.pvs.outputs}

    def wired(self) -> dict[str, PVSpec]:
        """Inputs and outputs with a link, inputs first."""
        return {k: v for k, v in self.all_pvs().items() if v.link is not None}

    @property
    def has_logic(self) -> bool:
        """Rules, transforms, latches or links: the plugin gets CLEAR and RESET."""
        return bool(
            self.rules
            or self.transforms
            or self.wired()
            or any(v.latch for v in self.pvs.outputs.values())
        )

    def rule_ids(self) -> list[str]:
        return [r.id or f"rule-{i + 1}" for i, r in enumerate(self.rules)]


def check_logic_references(cfg: PluginConfig) -> None:
    """Rules, transforms and latches may only name PVs the config declares, in their roles."""
    ins, outs = cfg.pvs.inputs, cfg.pvs.outputs
    wired = cfg.wired()
    problems = []
    for name, spec in ins.items():
        if spec.latch:
            problems.append(f"pvs.inputs.{name}: latch applies to outputs only")
    sys_conn = outs.get(SYS_CONN)
    if sys_conn is not None and (sys_conn.type != "string" or sys_conn.link):
        problems.append(
            f"outputs.{SYS_CONN}: must be a string output without a link (iocmng writes it)"
        )
    ids = cfg.rule_ids()
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(f"rules: duplicate id {', '.join(dup)}")
    for rid, rule in zip(ids, cfg.rules, strict=True):
        for out in rule.outputs:
            if out not in outs:
                problems.append(f"rules.{rid}.outputs: {out!r} is not a declared output")
            elif outs[out].link is not None:
                problems.append(
                    f"rules.{rid}.outputs: {out!r} is wired (write external PVs with actuators)"
                )
        if rule.message_pv is not None:
            mp = outs.get(rule.message_pv)
            if mp is None or mp.type != "string":
                problems.append(
                    f"rules.{rid}.message_pv: {rule.message_pv!r} is not a declared string output"
                )
        for act in rule.actuators:
            if act not in wired:
                problems.append(
                    f"rules.{rid}.actuators: {act!r} is not a wired PV (an input or output with a link)"
                )
    for key in cfg.rule_defaults:
        if key not in outs:
            problems.append(f"rule_defaults: {key!r} is not a declared output")
    for i, t in enumerate(cfg.transforms):
        if t.output not in outs:
            problems.append(f"transforms.{i}.output: {t.output!r} is not a declared output")
    if problems:
        raise ValueError("; ".join(problems))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged_parameters(
    config: PluginConfig, overrides: dict[str, Any] | None, where: str = "parameters"
) -> Parameters:
    """Merge REST/CLI overrides into the config defaults and validate the scheduling keys."""
    merged = deep_merge(config.parameters, overrides or {})
    try:
        return Parameters.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(where, format_errors(exc, prefix="parameters")) from None


def format_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Turn pydantic errors into ``{loc, msg}`` items with dotted field paths."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `iocmng schema`)"
        if not err["loc"] and err["type"] == "value_error" and _CROSS_CHECK.match(msg):
            # check_logic_references: "path: problem; path: problem" -> one item per path
            for part in msg.split("; "):
                where, _, what = part.partition(": ")
                out.append({"loc": f"{prefix}.{where}" if prefix else where, "msg": what})
            continue
        out.append({"loc": loc, "msg": msg})
    return out


_CROSS_CHECK = re.compile(r"^[\w.-]+: ")


def find_config(directory: Path) -> Path | None:
    for name in CONFIG_NAMES:
        path = directory / name
        if path.is_file():
            return path
    return None


def parse_config(text: str, file: str = "config.yaml") -> PluginConfig:
    """Parse and validate config.yaml text; raise ConfigError naming every failed field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            file, [{"loc": "", "msg": f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"}]
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            file, [{"loc": "", "msg": f"must be a mapping at top level, not {type(data).__name__}"}]
        )
    try:
        return PluginConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, format_errors(exc)) from None


def load_config(directory: Path) -> PluginConfig:
    """Load the config.yaml (or config.yml) of a plugin directory."""
    path = find_config(directory)
    if path is None:
        raise ConfigError(
            str(directory / "config.yaml"),
            [{"loc": "", "msg": "missing: a plugin needs a config.yaml (or config.yml)"}],
        )
    return parse_config(path.read_text(encoding="utf-8"), str(path))


def json_schema() -> dict[str, Any]:
    """The JSON schema of config.yaml (printed by ``iocmng schema``)."""
    return PluginConfig.model_json_schema()
