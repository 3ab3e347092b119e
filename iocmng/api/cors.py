"""CORS, and no cross-site driving: which browser pages may call the API.

``IOCMNG_CORS_ORIGINS`` lists the origins allowed (``https://dash.example.org``,
comma-separated) or ``*``; unset, none is (a page served by this service is
same-origin and needs no CORS). What an allowed origin gets:

- a preflight ``OPTIONS`` on any ``/api/v1`` route is answered 204 with the
  methods and the ``Authorization`` and ``Content-Type`` headers allowed
  (before the token check: a browser never sends a token in a preflight);
- every answer, errors included, carries ``Access-Control-Allow-Origin`` so
  the page can read it.

``Access-Control-Allow-Credentials`` is never sent: the API's only credential
is a bearer token that the page sets itself, which CORS does not count as a
credential, and cookies are not used. A preflight from an origin not allowed
is a 403 problem naming the setting.

What no page may do (cross-site request forgery, :func:`guard`): a request whose ``Origin``
is neither this service's own (same host and port) nor allowed above is
refused with 403, and a mutating request that carries a body must say
``Content-Type: application/json`` (415 otherwise): a cross-site form or a
``text/plain`` fetch, which browsers send without asking, can no longer
pass JSON to the API. A request without a body needs no type, so ``curl -X
POST .../run`` and iocmng 2.7.9's clients keep working.

Nor may a page reach the API through DNS rebinding (its own name made to
resolve to this machine, so that the browser sees one origin): the ``Host``
header must be an IP address, a loopback name, the bind address, one of
this machine's names, or one listed in ``IOCMNG_ALLOWED_HOSTS`` (``*.domain``
for a domain's names, ``*`` for any); anything else is 403 (:func:`hosts`).
A rebinding page always sends its own *name*, never an address, so IP
addresses stay open for clients that call by address (probes included).

Written here rather than with aiohttp-cors: that library wants every route
registered with it one by one and answers preflights outside our
problem+json error path; the whole policy is the two functions below.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import web

from ..config.settings import Settings
from ..errors import Forbidden, UnsupportedMediaType
from .keys import ALLOWED_HOSTS, CORS_ORIGINS
from .problems import Handler

ALLOW_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
EXPOSE_HEADERS = "WWW-Authenticate, Allow, Retry-After"
#: Seconds a browser may cache a preflight answer.
MAX_AGE = "600"


def allow_origin(origins: tuple[str, ...], origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for ``origin``, or None if it is not allowed."""
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin.rstrip("/") in origins else None


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights on ``/api/v1`` routes (a 404 path stays a 404)."""
    if (
        request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
        and request.path.startswith("/api/v1/")
    ):
        exc = request.match_info.http_exception
        if exc is None or exc.status == 405:
            origin = request.headers.get("Origin")
            allowed = allow_origin(request.app[CORS_ORIGINS], origin)
            if allowed is None:
                raise Forbidden(
                    f"origin {str(origin)[:100]!r} may not call this API from a browser; add it to "
                    "IOCMNG_CORS_ORIGINS (comma-separated origins, or *)",
                    setting="IOCMNG_CORS_ORIGINS",
                )
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": allowed,
                    "Access-Control-Allow-Methods": ALLOW_METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": MAX_AGE,
                    "Vary": "Origin",
                },
            )
    return await handler(request)


LOOPBACK_NAMES = ("localhost", "*.localhost", "localhost.localdomain")


def host_policy(settings: Settings) -> tuple[str, ...]:
    """The host names accepted in ``Host`` (besides IP addresses); empty: any.

    Loopback names, the bind address and this machine's names, plus those
    listed in IOCMNG_ALLOWED_HOSTS (a Service's DNS name, an ingress host).
    """
    listed = settings.allowed_host_list
    if "*" in listed:
        return ()
    names = {*LOOPBACK_NAMES, *listed, settings.bind_host.lower()}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names |= {name.lower(), name.lower().split(".")[0]}
    return tuple(sorted(names))


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without port or brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


def host_allowed(policy: tuple[str, ...], header: str) -> bool:
    if not policy:
        return True
    name = host_name(header)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return any(name == p or (p.startswith("*.") and name.endswith(p[1:])) for p in policy)


@web.middleware
async def hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 unless the ``Host`` header names this service (DNS rebinding)."""
    header = request.headers.get("Host")
    if header is not None and not host_allowed(request.app[ALLOWED_HOSTS], header):
        raise Forbidden(
            f"the host name {host_name(header)[:100]!r} is not one this service answers to; add it "
            "to IOCMNG_ALLOWED_HOSTS (comma-separated names, *.domain, or *)",
            setting="IOCMNG_ALLOWED_HOSTS",
        )
    return await handler(request)


MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _json_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def same_origin(request: web.Request, origin: str) -> bool:
    """``origin`` names this service as the request reached it (host and port; the scheme
    is not compared, so a dashboard behind a TLS-terminating proxy stays same-origin)."""
    _, sep, netloc = origin.partition("://")
    return bool(sep) and netloc.rstrip("/").lower() == (request.host or "").lower()


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 for a page of another origin (not in IOCMNG_CORS_ORIGINS); 415 for a body that is not JSON."""
    origin = request.headers.get("Origin")
    if (
        origin is not None
        and request.method != "OPTIONS"
        and not same_origin(request, origin)
        and allow_origin(request.app[CORS_ORIGINS], origin) is None
    ):
        raise Forbidden(
            f"requests from the page at {origin[:100]!r} are refused: it is not this service's own "
            "origin; to let a dashboard there call the API, add it to IOCMNG_CORS_ORIGINS",
            setting="IOCMNG_CORS_ORIGINS",
        )
    if request.method in MUTATING and request.body_exists and not _json_type(request.content_type):
        raise UnsupportedMediaType(
            f"the body is {request.content_type!r}; send JSON with 'Content-Type: "
            "application/json' (a request without a body needs no type)"
        )
    return await handler(request)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer to an allowed origin says so (errors too, so the page can read them)."""
    origins = request.app[CORS_ORIGINS]
    if not origins:
        return
    allowed = allow_origin(origins, request.headers.get("Origin"))
    if allowed is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = allowed
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    if allowed != "*" and "Origin" not in response.headers.get("Vary", ""):
        response.headers.add("Vary", "Origin")
