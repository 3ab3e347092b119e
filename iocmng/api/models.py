"""Request bodies of the REST API, as strict pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: iocmng 2.7.9's name rule. The PV segment is the name upper-cased (unless
#: config.yaml sets ``prefix:``), so two names differing only in case serve
#: the same PVs: the second add is a 409 (Service._check_record_clash).
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
NAME_HELP = "1-128 characters: letters, digits, '_' or '-'"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid plugin name: {NAME_HELP}")
    return name


class AddPlugin(BaseModel):
    """Body of ``POST /tasks``, ``/jobs`` and ``/plugins``."""

    model_config = ConfigDict(extra="forbid")

    # The pattern is published in the schema (clients and fuzzers see it) but
    # checked by check_name, whose message says what a valid name looks like.
    name: str = Field(
        description=f"Plugin name: {NAME_HELP}",
        json_schema_extra={"pattern": NAME_RE.pattern, "minLength": 1, "maxLength": 128},
    )
    git_url: str | None = Field(
        None, description="https://, http:// or file:// URL of a git repository"
    )
    local_path: str | None = Field(
        None, description="Absolute path of a plugin directory on the server (development)"
    )
    pat: str | None = Field(
        None, description="Personal access token for https (never stored or returned)", repr=False
    )
    branch: str | None = Field(
        None, max_length=255, description="Branch or tag (default: the repository's HEAD)"
    )
    path: str = Field("", max_length=1024, description="Plugin directory inside the repository")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of config.yaml parameters"
    )
    auto_start: bool = Field(
        True,
        description="false: registered and its PVs built, but not started "
        "(start it with POST /plugins/{name}/restart)",
    )
    auto_start_on_boot: bool = Field(
        True,
        description="false: after a restart of the service the plugin stays "
        "registered but is not started (iocmng 2.7.9 defaulted to false)",
    )
    autostart_order: int | None = Field(
        None,
        ge=-1_000_000,
        le=1_000_000,
        description="Start order when a generation starts: lower first, each "
        "group after the previous one's initialize(); plugins without one last",
    )

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))

    @field_validator("parameters", mode="before")
    @classmethod
    def _null_parameters(cls, v: Any) -> Any:
        return {} if v is None else v  # iocmng 2.7.9's clients send "parameters": null

    @model_validator(mode="after")
    def _one_source(self) -> AddPlugin:
        if bool(self.git_url) == bool(self.local_path):
            raise ValueError("give exactly one of git_url or local_path")
        return self


class RunJob(BaseModel):
    """Body of ``POST /jobs/{name}/run`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Overrides for this run only"
    )
    timeout: float | None = Field(
        None, gt=0, le=86400, description="Seconds before the run counts as failed"
    )


class Restart(BaseModel):
    """Body of ``POST /plugins/{name}/restart`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] | None = Field(
        None, description="New parameter overrides (persisted)"
    )
    pat: str | None = Field(
        None,
        repr=False,
        description="Token for fetching a private https repository again "
        "(used for this fetch only: never stored, logged or returned)",
    )
