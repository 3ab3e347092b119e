"""One exception tree for iocmng; each class knows the HTTP status it maps to.

::

    IocmngError (500)
    ├── ConfigError (422)            a plugin config.yaml is wrong (field paths listed)
    ├── PluginLoadError (422)        the plugin code cannot be used (class, abstract methods, import)
    ├── ValidationFailed (422)       the validation pipeline refused a plugin (per-step report)
    ├── SourceError (422)            a git/local source cannot be fetched (token redacted)
    ├── BadRequest (400)             a request cannot be read (not JSON, bad query/path parameter)
    │   └── InvalidRequest (422)     a JSON body that does not fit the endpoint's schema (names the field)
    ├── Unauthorized (401)
    ├── Forbidden (403)              a browser page of another origin (IOCMNG_CORS_ORIGINS)
    ├── NotFound (404)
    ├── Conflict (409)               duplicate name, job already running
    ├── UnsupportedMediaType (415)   a body that is not JSON (cross-site forms cannot drive the API)
    ├── Abandoned (503)              an add in flight when a reload came: nothing registered, try again
    ├── InsufficientStorage (507)    the data directory is full or read-only
    ├── ChannelFinderError (502)     a ChannelFinder look-up failed (raised into plugin code)
    ├── PVNotFound (404)             PV gateway: no server answered the name
    ├── PVForbidden (403, a Forbidden) PV gateway: a write outside IOCMNG_PV_WRITE_PATTERN or refused by access rights
    ├── PVServerError (502)          PV gateway: the PV's server answered with an error
    ├── PVTimeout (504)              PV gateway: a connected PV did not answer in time
    └── SettingsError                a service setting is invalid (start-up, exits non-zero)

A caller's mistake is always a 4xx; 500 is reserved for bugs of ours. Every
problem document also carries ``ok: false`` and ``message`` (the detail), the
two fields iocmng 2.7.9's clients read (docs/decisions/0011).
"""

from __future__ import annotations

import errno
from typing import Any


class IocmngError(Exception):
    """Base class of every error iocmng raises on purpose."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        body.update(ok=False, message=self.detail)  # iocmng 2.7.9's clients read these
        return body


class ConfigError(IocmngError):
    """A plugin's config.yaml is malformed; ``errors`` lists ``{loc, msg}`` items."""

    status = 422
    title = "Invalid plugin configuration"

    def __init__(self, file: str, errors: list[dict[str, str]]) -> None:
        lines = "; ".join(f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in errors)
        super().__init__(f"{file}: {lines}", errors=errors)
        self.file = file
        self.errors = errors


class PluginLoadError(IocmngError):
    """The plugin's code cannot be used (no class, two classes, abstract methods...)."""

    status = 422
    title = "Plugin cannot be loaded"


class ValidationFailed(IocmngError):
    """The validation pipeline refused a plugin; ``steps`` is the per-step report."""

    status = 422
    title = "Plugin validation failed"


class SourceError(IocmngError):
    """A source (git repository, branch, local path) cannot be fetched."""

    status = 422
    title = "Plugin source unavailable"


class BadRequest(IocmngError):
    status = 400
    title = "Bad request"


class InvalidRequest(BadRequest):
    """The JSON body was read but a field is wrong (unknown key, wrong type, bad name...).

    422, as FastAPI answers and as iocmng 2.7.9's clients expect (docs/decisions/0011).
    """

    status = 422
    title = "Invalid request"


class Unauthorized(IocmngError):
    status = 401
    title = "Unauthorized"


class Forbidden(IocmngError):
    status = 403
    title = "Forbidden"


class NotFound(IocmngError):
    status = 404
    title = "Not found"


class Conflict(IocmngError):
    status = 409
    title = "Conflict"


class UnsupportedMediaType(IocmngError):
    status = 415
    title = "Unsupported media type"


class Abandoned(IocmngError):
    """An add still validating when the service reloads for another change: abandoned (nothing
    registered, nothing left behind) rather than holding the reload, and every client, for it."""

    status = 503
    title = "Service reloading"


class Reloading(IocmngError):
    """A job run or a triggered cycle asked for while a reload waits for the work in
    progress to end: refused (the next generation takes it)."""

    status = 503
    title = "Service reloading"


class InsufficientStorage(IocmngError):
    """The data directory cannot be written (full, over quota, read-only): nothing was changed."""

    status = 507
    title = "Insufficient storage"


#: errno values that mean "the data directory cannot take this write".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def storage_error(exc: BaseException, what: str) -> InsufficientStorage | None:
    """An InsufficientStorage for ``exc`` if it is a full or read-only file system, else None."""
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return InsufficientStorage(
            f"{what}: {exc.strerror}{where}; the data directory is full or read-only, "
            "nothing was changed; free space or make it writable and try again"
        )
    return None


class ChannelFinderError(IocmngError):
    """A ChannelFinder look-up failed: no URL, unreachable, timeout, HTTP error or bad JSON."""

    status = 502
    title = "ChannelFinder unavailable"


class SettingsError(IocmngError):
    """A service setting (IOCMNG_* variable or config file) is invalid."""

    title = "Invalid settings"


class PVNotFound(IocmngError):
    status = 404
    title = "PV not found"


class PVForbidden(Forbidden):
    pass


class PVServerError(IocmngError):
    """The PV's server answered, with an error (access denied, a failed put...)."""

    status = 502
    title = "PV server error"


class PVTimeout(IocmngError):
    status = 504
    title = "PV timeout"
