"""Service settings from ``IOCMNG_*`` environment variables (docs/operations.md lists them).

A bad value is a :class:`~iocmng.errors.SettingsError` naming the variable;
``iocmng-server`` prints it and exits non-zero.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import SettingsError

PREFIX_RE = re.compile(r"^[A-Za-z0-9_:\-]{1,40}$")


def default_data_dir() -> Path:
    """A per-user data directory (XDG), used when IOCMNG_PLUGINS_DIR is unset."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "iocmng" / "plugins"


class StartupPlugin(BaseModel):
    """One entry of the service config's ``plugins:`` list (loaded at start)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    git_url: str | None = None
    local_path: str | None = None
    branch: str | None = None
    path: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    kind: Literal["task", "job"] | None = None
    auto_start: bool = True
    autostart_order: int | None = None
    pat_env: str | None = None


class ServiceConfig(BaseModel):
    """The file named by IOCMNG_CONFIG."""

    model_config = ConfigDict(extra="ignore")

    prefix: str | None = None
    plugins: list[StartupPlugin] = Field(default_factory=list)


class Settings(BaseSettings):
    """Service settings; every field is an ``IOCMNG_<NAME>`` variable."""

    model_config = SettingsConfigDict(env_prefix="IOCMNG_", extra="ignore")

    config: Path | None = Field(None, description="Service config.yaml (prefix, startup plugins)")
    beamline_config: Path | None = Field(
        None, description="epik8s values.yaml (beamline, namespace, devices)"
    )
    plugins_dir: Path = Field(
        default_factory=default_data_dir, description="Clones, registry, autosave"
    )
    host: str | None = Field(
        None, description="HTTP bind address; unset: 0.0.0.0 with a token, else 127.0.0.1"
    )
    port: int = Field(8080, ge=0, le=65535, description="HTTP port")
    prefix: str | None = Field(None, description="PV prefix")
    disable_ophyd: bool = Field(True, description="Skip ophyd device creation")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field("info")
    api_token: str | None = Field(
        None, description="Bearer token for mutating endpoints", repr=False
    )
    api_token_file: Path | None = Field(
        None,
        description="File holding the API token (a mounted Secret), instead of IOCMNG_API_TOKEN",
    )
    allow_insecure: bool = Field(
        False,
        description="Serve a non-loopback address without a token "
        "(anyone who reaches the port can load code: a warning at every start)",
    )
    allowed_hosts: str | None = Field(
        None,
        description="Host names the API answers to besides IP addresses, "
        "loopback names, the bind address and this machine's names (comma-separated; "
        "*.domain for a domain's names; * for any name) (iocmng/api/cors.py)",
    )
    allow_requirements: bool = Field(
        True, description="Install a plugin's requirements.txt (false: refuse such plugins)"
    )
    acf: Path | None = Field(
        None,
        description="A site's EPICS access security file for the service's records, instead of "
        "the built-in one; it must define ASG(DEFAULT) and ASG(WRITABLE) (docs/security.md)",
    )
    git_timeout: float = Field(120.0, gt=0, description="Seconds allowed for a clone")
    pip_timeout: float = Field(
        300.0, gt=0, description="Seconds allowed for installing requirements"
    )
    import_timeout: float = Field(
        30.0, gt=0, description="Seconds allowed for the child-process import check"
    )
    reload_delay: float = Field(
        0.3, ge=0, description="Seconds to coalesce record-set changes into one reload"
    )
    reload_wait: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Seconds a reload waits for job runs and triggered cycles in progress "
        "(then cancels them, and their answers say so)",
    )
    apply: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: a change of the record set reloads at once; manual: changes wait, "
        "pending, for POST /api/v1/apply",
    )
    keep_state: bool = Field(
        False,
        description="Also carry plugins' state and counters across a stop and start of the "
        "service (SIGTERM), not only across reloads",
    )
    max_body: int = Field(1 << 20, gt=0, description="Largest accepted request body, bytes")
    read_auth: bool = Field(
        False, description="Also require the API token for reads (except /api/v1/health)"
    )
    stall_threshold: float = Field(
        0.5, gt=0, description="Seconds the event loop may stall before the watchdog reports it"
    )
    stall_limit: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds a plugin may hold the event loop before the watchdog stops it (held failed until restarted); at 3x this the process ends and restarts without it",
    )
    pv_provider: Literal["ca", "pva"] = Field(
        "ca", description="PV gateway: default protocol (ca or pva)"
    )
    pv_timeout: float = Field(
        5.0, gt=0, description="PV gateway: default timeout of a read/write, seconds"
    )
    pv_max_timeout: float = Field(
        30.0, gt=0, le=3600, description="PV gateway: largest timeout a request may ask"
    )
    pv_write_pattern: str | None = Field(
        None,
        description="PV gateway: globs (comma/space separated) of writable PV names; unset: <prefix>:*, empty: none",
    )
    pv_max_monitors: int = Field(
        100,
        ge=0,
        le=10000,
        description="PV gateway: most server-side monitors, and most open monitor streams",
    )
    plugins_config: Path | None = Field(
        None, description="Boot list: YAML `plugins:` loaded at a real start (docs/operations.md)"
    )
    channelfinder_url: str | None = Field(
        None, description="ChannelFinder base URL, e.g. http://cf:8080/ChannelFinder"
    )
    channelfinder_timeout: float = Field(
        10.0, gt=0, le=600, description="Seconds allowed for one ChannelFinder request"
    )
    link_protocol: Literal["ca", "pva"] | None = Field(
        None,
        description="Plugin links without ca:// or pva://: "
        "ca (default) or pva; a plugin's parameter pva overrides it",
    )
    pva: bool | None = Field(
        None, description="iocmng 2.7.9's switch: true means IOCMNG_LINK_PROTOCOL=pva, false ca"
    )
    cors_origins: str | None = Field(
        None,
        description="Origins (comma-separated, e.g. https://dash.example.org) whose "
        "browser pages may call the API, or *; unset: none (iocmng/api/cors.py)",
    )

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return tuple(
            o.strip().rstrip("/") for o in (self.cors_origins or "").split(",") if o.strip()
        )

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: str | None) -> str | None:
        for origin in (o.strip().rstrip("/") for o in (v or "").split(",") if o.strip()):
            if origin != "*" and not re.match(r"^https?://[^\s/]+$", origin):
                raise ValueError(
                    f"{origin!r} is not an origin: use scheme://host[:port] (e.g. http://dash.example:3000), "
                    "comma-separated, or *"
                )
        return v

    @property
    def default_link_protocol(self) -> str:
        if self.link_protocol is not None:
            return self.link_protocol
        return "pva" if self.pva else "ca"

    @field_validator("channelfinder_url")
    @classmethod
    def _cf_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(
                "use an http:// or https:// URL (the ChannelFinder base, e.g. http://cf:8080/ChannelFinder)"
            )
        return v or None

    @field_validator("log_level", "apply", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("api_token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("empty: set a token, or unset the variable to run without one")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: str | None) -> str | None:
        for host in (h.strip() for h in (v or "").split(",") if h.strip()):
            if host != "*" and not re.match(r"^(\*\.)?[A-Za-z0-9_.\-\[\]:]+$", host):
                raise ValueError(
                    f"{host!r} is not a host name: use names (iocmng.example.org), "
                    "*.example.org for a domain, or *"
                )
        return v

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in (self.allowed_hosts or "").split(",") if h.strip())

    @property
    def bind_host(self) -> str:
        """The HTTP bind address (IOCMNG_HOST, or the secure default chosen at load)."""
        return self.host or "127.0.0.1"

    @property
    def insecure(self) -> bool:
        """True when the API is served beyond this machine with no token (IOCMNG_ALLOW_INSECURE)."""
        return not self.api_token and not is_loopback(self.host or "")

    def check_exposure(self) -> None:
        """Refuse to serve the API beyond this machine without a token, unless told to (docs/decisions/0012).

        Called by the server only: ``iocmng run`` and ``iocmng-run`` read the
        same settings but serve no API.
        """
        if self.insecure and not self.allow_insecure:
            raise SettingsError(
                f"IOCMNG_HOST={self.host!r} serves the API beyond this machine, and without IOCMNG_API_TOKEN "
                "anyone who reaches the port can load and run code in this service. Set IOCMNG_API_TOKEN (e.g. "
                "$(openssl rand -hex 24)) or IOCMNG_API_TOKEN_FILE, or bind IOCMNG_HOST=127.0.0.1, or set "
                "IOCMNG_ALLOW_INSECURE=true to accept the risk (docs/security.md)"
            )

    @model_validator(mode="after")
    def _secure_default(self) -> Settings:
        """The token from its file; the bind address: everywhere with a token, else loopback."""
        if self.api_token_file is not None:
            if self.api_token:
                raise ValueError(
                    "IOCMNG_API_TOKEN and IOCMNG_API_TOKEN_FILE are both set: keep one"
                )
            try:
                token = self.api_token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"IOCMNG_API_TOKEN_FILE={str(self.api_token_file)!r} cannot be read "
                    f"({type(exc).__name__}); mount the Secret there or unset it"
                ) from None
            if not token:
                raise ValueError(
                    f"IOCMNG_API_TOKEN_FILE={str(self.api_token_file)!r} is empty; put the token in it"
                )
            self.api_token = token
        if self.host is None:
            self.host = "0.0.0.0" if self.api_token else "127.0.0.1"
        return self

    @field_validator("acf")
    @classmethod
    def _acf(cls, v: Path | None) -> Path | None:
        if v is None:
            return None
        try:
            text = v.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"cannot be read ({type(exc).__name__}); mount the file there or unset it"
            ) from None
        problem = check_site_file(text)
        if problem:
            raise ValueError(problem)
        return v.resolve()

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and not PREFIX_RE.match(v):
            raise ValueError("use 1-40 letters, digits, '_', '-' or ':'")
        return v


#: The access security groups the service's records use (iocmng/epics/access_security.py):
#: a site's ACF must define both.
ACF_GROUPS = ("DEFAULT", "WRITABLE")


def check_site_file(text: str) -> str | None:
    """What a site's ACF (``IOCMNG_ACF``) lacks for the service's records, or None."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    missing = [g for g in ACF_GROUPS if not re.search(rf"\bASG\s*\(\s*{g}\s*\)", code)]
    if missing:
        return (
            f"it defines no {' and no '.join(f'ASG({g})' for g in missing)}: the service's "
            "records use ASG(DEFAULT) (read-only ones) and ASG(WRITABLE) (inputs, ENABLE, RUN, "
            "CLEAR, RESET); start from the built-in file in docs/security.md"
        )
    return None


def is_loopback(host: str) -> bool:
    """``host`` (a bind address or name) reaches this machine only."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read the settings; raise SettingsError naming the variable on a bad value."""
    saved = None
    if env is not None:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a rule over several settings: its message names them
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            var = "IOCMNG_" + "_".join(str(p) for p in err["loc"]).upper()
            shown = "" if "TOKEN" in var else f"={err.get('input')!r}"  # never echo a secret
            problems.append(f"{var}{shown}: {err['msg']}")
        raise SettingsError("; ".join(problems)) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)


#: ``IOCMNG_*`` variables read outside :class:`Settings` (the CLI, the container, the supervisor).
OTHER_VARIABLES = frozenset(
    {
        "IOCMNG_URL",  # the CLI's server
        "IOCMNG_GIT_PAT",  # the CLI's git token
        "IOCMNG_RUN_DIR",  # the container's start.sh
        "IOCMNG_LISTEN_FD",  # set by the service for its next generation
        "IOCMNG_FRESH_START",  # set by the supervisor
        "IOCMNG_SAFE_MODE",  # set by the supervisor
    }
)
#: Names people reach for, and the setting that does it.
MEANT = {"IOCMNG_DATA_DIR": "IOCMNG_PLUGINS_DIR", "IOCMNG_TOKEN": "IOCMNG_API_TOKEN"}
#: iocmng 2.7.9's variables that mean nothing here, and why.
RETIRED_VARIABLES = {
    "IOCMNG_ENABLE_SOFTIOC": "iocmng 2.7.9's switch to run without an IOC; here the IOC always runs",
}


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """A warning for each ``IOCMNG_*`` variable that nothing reads: a misspelt setting
    (``IOCMNG_DATA_DIR`` for ``IOCMNG_PLUGINS_DIR``) would otherwise pass unnoticed."""
    settings = sorted(f"IOCMNG_{name.upper()}" for name in Settings.model_fields)
    known = {*settings, *OTHER_VARIABLES}
    warnings = []
    for given in sorted(env):
        name = given.upper()  # pydantic-settings reads the names case-insensitively
        if not name.startswith("IOCMNG_") or name in known:
            continue
        if name in RETIRED_VARIABLES:
            warnings.append(f"{given} has no effect: {RETIRED_VARIABLES[name]}")
            continue
        close = (
            [MEANT[name]] if name in MEANT else difflib.get_close_matches(name, settings, 1, 0.8)
        )
        hint = f"did you mean {close[0]}? " if close else ""
        warnings.append(
            f"{given} is not an iocmng setting and is ignored ({hint}the settings: docs/operations.md)"
        )
    return warnings


def read_service_config(path: Path | None) -> ServiceConfig:
    if path is None:
        return ServiceConfig()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return ServiceConfig.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SettingsError(f"IOCMNG_CONFIG={str(path)!r}: {exc}") from None


def resolve_prefix(settings: Settings, service_config: ServiceConfig | None = None) -> str:
    """The PV prefix: IOCMNG_PREFIX, then the config file's ``prefix``,
    then BEAMLINE:NAMESPACE from the beamline values.yaml, else ``IOCMNG``."""
    if settings.prefix:
        return settings.prefix
    if service_config and service_config.prefix:
        if not PREFIX_RE.match(service_config.prefix):
            raise SettingsError(
                f"IOCMNG_CONFIG prefix {service_config.prefix!r}: use 1-40 letters, digits, '_', '-' or ':'"
            )
        return service_config.prefix
    if settings.beamline_config:
        try:
            values = (
                yaml.safe_load(Path(settings.beamline_config).read_text(encoding="utf-8")) or {}
            )
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(
                f"IOCMNG_BEAMLINE_CONFIG={str(settings.beamline_config)!r}: {exc}"
            ) from None
        parts = [
            str(values[k]).upper()
            for k in ("beamline", "namespace")
            if isinstance(values, dict) and values.get(k)
        ]
        if parts:
            return ":".join(parts)
    return "IOCMNG"
