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

from .errors import ConfigError

#: A PV name part: letters, digits, ``_``, ``-`` and ``:``, starting with a letter or digit.
PV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:\-]{0,59}$")

PVType = Literal["float", "int", "string", "bool"]
Mode = Literal["continuous", "triggered"]

CONFIG_NAMES = ("config.yaml", "config.yml")


class PVSpec(BaseModel):
    """One declared PV of a plugin (an input or an output)."""

    model_config = ConfigDict(extra="forbid")

    type: PVType = Field("float", description="float (ai/ao), int (longin/longout), string (stringin/out), bool (bi/bo)")
    value: float | int | str | bool | None = Field(None, description="Initial value (default 0, '' or false)")
    unit: str | None = Field(None, max_length=15, description="Engineering units (EGU)")
    prec: int | None = Field(None, ge=0, le=15, description="Display precision (PREC), float only")
    low: float | None = Field(None, description="Display low limit (LOPR); drive low limit (DRVL) for inputs")
    high: float | None = Field(None, description="Display high limit (HOPR); drive high limit (DRVH) for inputs")
    znam: str | None = Field(None, max_length=25, description="Label of state 0 (ZNAM), bool only")
    onam: str | None = Field(None, max_length=25, description="Label of state 1 (ONAM), bool only")
    description: str | None = Field(None, max_length=40, description="Record description (DESC)")

    @model_validator(mode="after")
    def _check_type_fields(self) -> PVSpec:
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

    inputs: dict[str, PVSpec] = Field(default_factory=dict, description="Writable by operators (output records)")
    outputs: dict[str, PVSpec] = Field(default_factory=dict, description="Written by the plugin, read-only to clients")

    _names_in = field_validator("inputs")(classmethod(lambda cls, v: _check_pv_names(v)))
    _names_out = field_validator("outputs")(classmethod(lambda cls, v: _check_pv_names(v)))

    @model_validator(mode="after")
    def _no_overlap(self) -> PVsConfig:
        both = sorted(set(self.inputs) & set(self.outputs))
        if both:
            raise ValueError(f"PV names declared both as input and output: {', '.join(both)}")
        return self


class Parameters(BaseModel):
    """The scheduling keys of ``parameters:``; any other key is the plugin's own."""

    model_config = ConfigDict(extra="allow")

    mode: Mode = Field("continuous", description="Tasks: continuous (loop every interval) or triggered (RUN PV)")
    interval: float = Field(1.0, gt=0, le=86400, description="Seconds between cycle starts (continuous tasks)")


class PluginConfig(BaseModel):
    """A plugin's ``config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict, description="Defaults of self.parameters")
    pvs: PVsConfig = Field(default_factory=PVsConfig, description="Declared PVs")

    @field_validator("parameters", mode="after")
    @classmethod
    def _check_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        Parameters.model_validate(value)
        return value

    @property
    def mode(self) -> str:
        return Parameters.model_validate(self.parameters).mode

    def all_pvs(self) -> dict[str, PVSpec]:
        return {**self.pvs.inputs, **self.pvs.outputs}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged_parameters(config: PluginConfig, overrides: dict[str, Any] | None, where: str = "parameters") -> Parameters:
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
        out.append({"loc": loc, "msg": msg})
    return out


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
        raise ConfigError(file, [{"loc": "", "msg": f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"}]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, [{"loc": "", "msg": f"must be a mapping at top level, not {type(data).__name__}"}])
    try:
        return PluginConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(file, format_errors(exc)) from None


def load_config(directory: Path) -> PluginConfig:
    """Load the config.yaml (or config.yml) of a plugin directory."""
    path = find_config(directory)
    if path is None:
        raise ConfigError(str(directory / "config.yaml"), [{"loc": "", "msg": "missing: a plugin needs a config.yaml (or config.yml)"}])
    return parse_config(path.read_text(encoding="utf-8"), str(path))


def json_schema() -> dict[str, Any]:
    """The JSON schema of config.yaml (printed by ``iocmng schema``)."""
    return PluginConfig.model_json_schema()
