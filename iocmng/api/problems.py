"""RFC 9457 problem+json for every error, and the auth/size checks."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from ..config.models import format_errors
from ..errors import BadRequest, InvalidRequest, IocmngError, Unauthorized, storage_error
from .http import bearer_ok
from .keys import API_TOKEN, MAX_BODY, READ_AUTH

log = logging.getLogger("iocmng.api")

CONTENT_TYPE = "application/problem+json"
#: Reads that stay open with IOCMNG_READ_AUTH: the probe, and the API's own
#: description (a browser cannot send a token to open the page).
OPEN_READS = frozenset({"/api/v1/health", "/api/v1/docs", "/api/v1/openapi.json", "/", "/ui"})
#: The dashboard's pages and files (iocmng.api.ui): they render no data
#: without a valid token when reads need one.
OPEN_READ_PREFIXES = ("/ui/",)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
        "ok": False,
        "message": detail,
    }
    return web.Response(status=status, text=json.dumps(body), content_type=CONTENT_TYPE)


def from_error(err: IocmngError) -> web.Response:
    body = err.problem()
    resp = web.Response(
        status=err.status, text=json.dumps(body, default=str), content_type=CONTENT_TYPE
    )
    if err.status == 401:  # RFC 9110 §15.5.2: a 401 names the scheme it wants
        resp.headers["WWW-Authenticate"] = 'Bearer realm="iocmng"'
    if (
        err.status == 503
    ):  # RFC 9110 §10.2.3: when to try again (the next generation is seconds away)
        resp.headers["Retry-After"] = "2"
    return resp


def from_validation(exc: ValidationError, where: str = "body") -> IocmngError:
    errors = format_errors(exc)
    for e in errors:  # the config.yaml hint of format_errors does not fit a request body
        e["msg"] = e["msg"].replace("see `iocmng schema`", "see /api/v1/openapi.json")
    detail = "; ".join(
        f"{where}.{e['loc']}: {e['msg']}" if e["loc"] else f"{where}: {e['msg']}" for e in errors
    )
    return InvalidRequest(detail, errors=errors)


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IocmngError as err:
        return from_error(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text or exc.reason
        if exc.status == 413:
            detail = f"request body too large (limit {request.app[MAX_BODY]} bytes)"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            detail = f"no such endpoint: {request.path}"
        resp = problem_response(exc.status, exc.reason, detail)
        if "Allow" in exc.headers:  # RFC 9110 §15.5.6: a 405 lists the allowed methods
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except OSError as exc:
        storage = storage_error(exc, f"{request.method} {request.path}")
        if storage is not None:
            return from_error(storage)
        log.exception("internal error on %s %s", request.method, request.path)
        return problem_response(
            500, "Internal error", "an unexpected error occurred; see the service log"
        )
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return problem_response(
            500, "Internal error", "an unexpected error occurred; see the service log"
        )


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token: str | None = request.app[API_TOKEN]
    is_read = request.method in ("GET", "HEAD", "OPTIONS")
    open_read = request.path in OPEN_READS or request.path.startswith(OPEN_READ_PREFIXES)
    guarded = not is_read or (request.app[READ_AUTH] and not open_read)
    if token and guarded and not bearer_ok(request, token):
        raise Unauthorized("this endpoint needs 'Authorization: Bearer <token>' (IOCMNG_API_TOKEN)")
    return await handler(request)


#: Deepest nesting of arrays and objects accepted in a request body. Real bodies
#: are a few levels deep; the limit keeps every recursive walk of a body
#: (pydantic, deep_merge, JSON encoding) far from Python's recursion limit.
MAX_BODY_DEPTH = 64


def _too_deep(data: Any, limit: int = MAX_BODY_DEPTH) -> bool:
    """Whether ``data`` nests arrays/objects deeper than ``limit`` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


async def json_body(request: web.Request, model: type[Any], optional: bool = False) -> Any:
    """Parse and validate the JSON body into ``model``: 400 if it is not a JSON
    object, 422 naming the field if it does not fit the model."""
    raw = await request.read()
    if not raw.strip():
        if optional:
            return model()
        raise BadRequest("the request needs a JSON body")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # json's C decoder gives up on very deep nesting
        raise BadRequest(
            f"the body nests arrays or objects deeper than {MAX_BODY_DEPTH} levels"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    if _too_deep(data):
        raise BadRequest(f"the body nests arrays or objects deeper than {MAX_BODY_DEPTH} levels")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None
