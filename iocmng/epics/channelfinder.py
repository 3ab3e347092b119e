"""ChannelFinder look-ups for plugins: an async client and the ``cf_*`` helpers.

The service-wide URL is ``IOCMNG_CHANNELFINDER_URL`` (the ChannelFinder base,
e.g. ``http://cf:8080/ChannelFinder``); a plugin parameter
``channelfinder_url`` overrides it, ``channelfinder_timeout`` (seconds, else
``IOCMNG_CHANNELFINDER_TIMEOUT``) bounds every request. The client queries
``GET <url>/resources/channels`` with ChannelFinder's query parameters
(``~name``, ``~tag``, ``~size`` and one parameter per property).

Every failure (no URL configured, server unreachable, timeout, HTTP error,
a body that is not a JSON list of channels) raises
:class:`~iocmng.errors.ChannelFinderError` with a message naming the URL and
the problem: nothing is swallowed into an empty list.

The helpers on ``self`` (:class:`ChannelFinderHelpers`, mixed into every
plugin) return an awaitable when called on the event loop (``async def``
plugin code: ``await self.cf_search(...)``) and the result itself when
called from a worker thread (``def`` plugin code: ``self.cf_search(...)``;
the request then runs on the service loop via ``run_coroutine_threadsafe``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import ChannelFinderError

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("iocmng.channelfinder")

#: Seconds allowed for one ChannelFinder request unless configured otherwise.
DEFAULT_TIMEOUT = 10.0
#: Largest result set asked for (ChannelFinder's ``~size``).
DEFAULT_SIZE = 10000

__all__ = ["ChannelFinderClient", "ChannelFinderError", "ChannelFinderHelpers", "group_devices"]


def _props(channel: dict[str, Any]) -> dict[Any, Any]:
    return {
        p.get("name"): p.get("value", "")
        for p in channel.get("properties") or []
        if isinstance(p, dict)
    }


def _join(value: str | Iterable[str]) -> str:
    return value if isinstance(value, str) else ",".join(str(v) for v in value)


def search_params(
    name: str | None = None,
    tags: str | Iterable[str] | None = None,
    properties: dict[str, Any] | None = None,
    size: int = DEFAULT_SIZE,
    **property_filters: Any,
) -> list[tuple[str, str]]:
    """The query of a channel search. Values accept ChannelFinder globs (``*``, ``?``);
    a list of values for one property matches any of them; each tag must be present."""
    params: list[tuple[str, str]] = [("~size", str(int(size)))]
    if name:
        params.append(("~name", name))
    for tag in [tags] if isinstance(tags, str) else list(tags or []):
        params.append(("~tag", str(tag)))
    for key, value in {**(properties or {}), **property_filters}.items():
        if value is not None and value != "":
            params.append((key, _join(value)))
    return params


def group_devices(channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group channels into devices by their full prefix: everything before the last
    ``:`` segment (``SPARC:MOT:TML:GUNFLG01:RBV`` -> ``SPARC:MOT:TML:GUNFLG01``).

    Each device: ``name`` (the ``device`` property, else the prefix's last
    segment), ``prefix``, ``devgroup``, ``devtype``, ``iocname``, ``template``,
    ``properties`` (of its first channel), ``pvs`` and ``fields`` (sorted).
    Two devices with the same last segment in different areas stay apart.
    """
    devices: dict[str, dict[str, Any]] = {}
    for ch in channels:
        pv = str(ch.get("name", ""))
        if not pv:
            continue
        prefix, _, field = pv.rpartition(":")
        if not prefix:
            prefix, field = pv, ""
        props = _props(ch)
        dev = devices.get(prefix)
        if dev is None:
            dev = devices[prefix] = {
                "name": props.get("device") or prefix.rsplit(":", 1)[-1],
                "prefix": prefix,
                "devgroup": props.get("devgroup", ""),
                "devtype": props.get("devtype", ""),
                "iocname": props.get("iocName", ""),
                "template": props.get("template", ""),
                "properties": props,
                "pvs": [],
                "fields": [],
            }
        dev["pvs"].append(pv)
        if field:
            dev["fields"].append(field)
    for dev in devices.values():
        dev["pvs"].sort()
        dev["fields"].sort()
    return [devices[k] for k in sorted(devices)]


class ChannelFinderClient:
    """A minimal read-only async ChannelFinder client (aiohttp).

    Use as ``async with ChannelFinderClient(url) as cf: await cf.search(...)``;
    the session is closed on exit.
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ChannelFinderError(f"ChannelFinder URL {url!r}: use an http:// or https:// URL")
        self.base_url = url.rstrip("/")
        self.timeout = float(timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChannelFinderClient:
        # imported here, not with the module: every plugin imports this module before iocInit,
        # and aiohttp's 0.14 s would lengthen each reload's outage (docs/performance.md)
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        if self._session is None:
            raise RuntimeError("use ChannelFinderClient as 'async with'")
        from aiohttp import ClientError

        url = f"{self.base_url}/resources/{path}"
        try:
            async with self._session.get(
                url, params=params, headers={"Accept": "application/json"}
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    text = body[:200].decode("utf-8", "replace").strip()
                    raise ChannelFinderError(
                        f"ChannelFinder {url} answered HTTP {resp.status}"
                        + (f": {text}" if text else ""),
                        url=url,
                        http_status=resp.status,
                    )
        except TimeoutError:
            raise ChannelFinderError(
                f"ChannelFinder {url}: no answer within {self.timeout:g} s", url=url
            ) from None
        except ClientError as exc:
            raise ChannelFinderError(
                f"ChannelFinder {url} unreachable: {exc or type(exc).__name__}", url=url
            ) from None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ChannelFinderError(
                f"ChannelFinder {url}: the answer is not JSON ({exc})", url=url
            ) from None

    async def search(
        self,
        *,
        name: str | None = None,
        tags: str | Iterable[str] | None = None,
        properties: dict[str, Any] | None = None,
        size: int = DEFAULT_SIZE,
        tag: str | None = None,
        **property_filters: Any,
    ) -> list[dict[str, Any]]:
        """Channels matching a name pattern, tags and property values (``{name,
        owner, properties: [{name, value}], tags: [{name}]}`` each). ``tag`` is
        the reference's single-tag spelling; any other keyword is a property
        filter (``devgroup="mot"``, ``iocName="tml-ch1"``)."""
        all_tags = ([tags] if isinstance(tags, str) else list(tags or [])) + ([tag] if tag else [])
        data = await self._get(
            "channels", search_params(name, all_tags, properties, size, **property_filters)
        )
        if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
            raise ChannelFinderError(
                f"ChannelFinder {self.base_url}/resources/channels: expected a JSON list of "
                f"channels, got {type(data).__name__}"
            )
        return data

    async def discover_devices(self, **filters: Any) -> list[dict[str, Any]]:
        """Search (same filters as :meth:`search`) and group the channels with :func:`group_devices`."""
        return group_devices(await self.search(**filters))


def create_device(desc: dict[str, Any]) -> Any:
    """Build an ophyd device from a device description (infn_ophyd_hal's factory).

    Blocking (construction, connection wait): runs in a worker thread.
    Returns None without the ``ophyd`` extra (as ``get_device``, SPEC §9).
    """
    missing = [k for k in ("name", "prefix", "devgroup", "devtype") if not desc.get(k)]
    if missing:
        raise ValueError(
            f"cf_create_device: the description lacks {', '.join(missing)} "
            f"(prefix {desc.get('prefix')!r}); ChannelFinder properties devgroup/devtype are needed"
        )
    from .devices import Devices

    # the same import as the service's devices: ophyd on the caproto layer (decision 0007)
    probe = Devices(None, enabled=False)
    factory = probe._import()
    if factory is None:
        log.warning("cf_create_device: no device for %s: %s", desc["prefix"], probe.error)
        return None
    cls = Devices.resolve(factory, desc["devgroup"], desc["devtype"])
    if isinstance(cls, str):
        raise ValueError(f"cf_create_device {desc['name']!r} ({desc['prefix']}): {cls}")
    return cls(prefix=desc["prefix"], name=desc["name"], config=dict(desc.get("properties") or {}))


class ChannelFinderHelpers:
    """The ``cf_*`` methods of every plugin (tasks and jobs)."""

    parameters: dict[str, Any]
    _ctx: Any

    def _cf_settings(self) -> tuple[str, float]:
        url = self.parameters.get("channelfinder_url") or getattr(
            self._ctx, "channelfinder_url", None
        )
        if not url:
            raise ChannelFinderError(
                "no ChannelFinder URL: set IOCMNG_CHANNELFINDER_URL for the service or the "
                "plugin parameter channelfinder_url"
            )
        timeout = (
            self.parameters.get("channelfinder_timeout")
            or getattr(self._ctx, "channelfinder_timeout", None)
            or DEFAULT_TIMEOUT
        )
        return str(url), float(timeout)

    def _cf_run(self, work: Callable[[], Coroutine[Any, Any, Any]], timeout: float) -> Any:
        """An awaitable on the loop thread; the result itself from any other thread."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return work()
        loop = getattr(self._ctx, "loop", None)
        if loop is None or loop.is_closed():  # a plugin used outside a runtime (a script, a test)
            return asyncio.run(work())
        future = asyncio.run_coroutine_threadsafe(work(), loop)
        try:
            return future.result(timeout + 5.0)
        except TimeoutError:
            future.cancel()
            raise ChannelFinderError(
                f"ChannelFinder request did not finish within {timeout:g} s"
            ) from None

    def cf_search(
        self,
        name: str | None = None,
        *,
        tags: str | Iterable[str] | None = None,
        properties: dict[str, Any] | None = None,
        **filters: Any,
    ) -> Any:
        """Channels from ChannelFinder matching ``name`` (a glob), ``tags`` and
        property values (``properties={...}`` or keywords such as ``devgroup="mot"``).

        ``await`` it in ``async def`` code; in ``def`` code it returns the list.
        Raises :class:`~iocmng.errors.ChannelFinderError` on any failure.
        """
        url, timeout = self._cf_settings()

        async def work() -> list[dict[str, Any]]:
            async with ChannelFinderClient(url, timeout) as cf:
                return await cf.search(name=name, tags=tags, properties=properties, **filters)

        return self._cf_run(work, timeout)

    def cf_discover_devices(self, name: str | None = None, **filters: Any) -> Any:
        """Devices (channels grouped by their full prefix, see
        :func:`~iocmng.epics.channelfinder.group_devices`) matching the filters of :meth:`cf_search`."""
        url, timeout = self._cf_settings()

        async def work() -> list[dict[str, Any]]:
            async with ChannelFinderClient(url, timeout) as cf:
                return await cf.discover_devices(name=name, **filters)

        return self._cf_run(work, timeout)

    def cf_create_device(self, desc: dict[str, Any]) -> Any:
        """An ophyd device for a description from :meth:`cf_discover_devices`
        (``name``, ``prefix``, ``devgroup``, ``devtype``), built by
        infn_ophyd_hal's factory; ``None`` without the ``ophyd`` extra.
        Devices built here are cached per plugin (same prefix, group, type and name: same device)."""
        cache: dict[str, Any] = self.__dict__.setdefault("_cf_devices", {})

        def build() -> Any:
            key = "|".join(str(desc.get(k)) for k in ("prefix", "devgroup", "devtype", "name"))
            if key not in cache:
                cache[key] = create_device(desc)
            return cache[key]

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return build()
        return asyncio.to_thread(build)
