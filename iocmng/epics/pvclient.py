"""Asynchronous CA and PVA client of the REST PV gateway (:mod:`iocmng.api.gateway`).

CA goes through aioca, PVA through p4p's asyncio client; both deliver their
callbacks on the service's event loop, so nothing here blocks it, and every
await is bounded by the caller's timeout. aioca (not pyepics) is used because
it also reaches this process's own records (docs/decisions/0007).

Outcomes, as :mod:`iocmng.errors` exceptions:

* no server answers the name within the timeout -> :class:`PVNotFound` (404):
  "unknown" and "unreachable" cannot be told apart by a name search;
* a server answered, but the read/write did not complete in time ->
  :class:`PVTimeout` (504);
* a value the PV cannot take -> :class:`~iocmng.errors.BadRequest` (400),
  checked before anything is written;
* a read or write the PV's access rights refuse -> :class:`PVForbidden` (403;
  the gateway's own IOCMNG_PV_WRITE_PATTERN refusal is a 403 too);
* the server answered with an error (a failed put...) -> :class:`PVServerError` (502).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from ..errors import BadRequest, PVForbidden, PVNotFound, PVServerError, PVTimeout
from .alarm import AlarmStatus, Severity

#: Alarm severity and status names by value (EPICS's menuAlarmSevr / menuAlarmStat).
CA_SEVERITIES = [s.name for s in Severity]
CA_STATUSES = [s.name for s in AlarmStatus]
CA_TYPES = ["string", "short", "float", "enum", "char", "long", "double"]
INT_RANGES = {
    "short": (-(1 << 15), (1 << 15) - 1),
    "char": (-128, 255),
    "long": (-(1 << 31), (1 << 31) - 1),
}
#: p4p type codes of a ``value`` field (an array is "a" + code) and their names here.
PVA_TYPES = {
    "?": "bool",
    "b": "int8",
    "B": "uint8",
    "h": "int16",
    "H": "uint16",
    "i": "int32",
    "I": "uint32",
    "l": "int64",
    "L": "uint64",
    "f": "float",
    "d": "double",
    "s": "string",
}
for _bits in (8, 16, 32, 64):
    INT_RANGES[f"int{_bits}"] = (-(1 << (_bits - 1)), (1 << (_bits - 1)) - 1)
    INT_RANGES[f"uint{_bits}"] = (0, (1 << _bits) - 1)
INT_RANGES["bool"] = (0, 1)
MAX_STRING = 39  # a CA DBR_STRING holds 40 bytes with the terminating NUL


def plain(value: Any) -> Any:
    """A JSON-ready copy: numpy arrays/scalars to lists/numbers, NaN/inf to None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(name: str, value: Any, kind: str) -> float | int:
    not_number = BadRequest(
        f"value: {name} is a {kind} PV; {value!r} is not a number", field="value"
    )
    if isinstance(value, bool):
        if kind != "bool":
            raise not_number
        value = int(value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise not_number from None
    if not isinstance(value, int | float):
        raise not_number
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"value: {name} needs a finite number", field="value")
    if kind in INT_RANGES:
        if value != int(value):
            raise BadRequest(
                f"value: {name} is an integer ({kind}) PV; {value!r} is not a whole number",
                field="value",
            )
        low, high = INT_RANGES[kind]
        if not low <= int(value) <= high:
            raise BadRequest(
                f"value: {value} is out of range for {name} ({kind}: {low}..{high})", field="value"
            )
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise BadRequest(
            f"value: {value} is too large for {name} ({kind})", field="value"
        ) from None


def coerce(name: str, value: Any, kind: str, count: int, choices: list[str] | None) -> Any:
    """Check ``value`` against the PV's type; return what to write (400 naming the problem)."""
    if kind == "enum":
        assert choices is not None
        if isinstance(value, str) and value in choices:
            return choices.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
            return value
        raise BadRequest(
            f"value: {value!r} is not a choice of {name}: give an index 0..{len(choices) - 1} "
            f"or one of {choices}",
            field="value",
            choices=choices,
        )
    if kind == "string":
        if isinstance(value, list) and count > 1:
            return [coerce(name, v, kind, 1, None) for v in value]
        if not isinstance(value, str):
            raise BadRequest(
                f"value: {name} is a string PV; give a JSON string, not {value!r}", field="value"
            )
        if len(value.encode()) > MAX_STRING:
            raise BadRequest(
                f"value: {name} holds at most {MAX_STRING} bytes, got {len(value.encode())}",
                field="value",
            )
        return value
    if isinstance(value, list):
        if count <= 1:
            raise BadRequest(
                f"value: {name} is a scalar {kind} PV; give one number, not a list", field="value"
            )
        if len(value) > count:
            raise BadRequest(
                f"value: {name} holds at most {count} elements, got {len(value)}", field="value"
            )
        return [_number(name, v, kind) for v in value]
    return _number(name, value, kind)


class CAClient:
    """Channel Access via aioca (imported on first use: it creates libca's context)."""

    provider = "ca"

    async def _connect(self, name: str, timeout: float) -> Any:
        import aioca

        info = await aioca.cainfo(name, timeout=timeout, throw=False)
        if not info.ok:
            _forget_channel(name)
            raise PVNotFound(
                f"no Channel Access server answered for PV {name!r} within {timeout:g} s "
                "(unknown name, or its IOC is unreachable)",
                pv=name,
                provider="ca",
            )
        return info

    async def _ctrl(self, name: str, kind: str, left: float, timeout: float) -> list[str] | None:
        if kind != "enum":
            return None
        import aioca

        ctrl = await self._op(
            aioca.caget(name, format=aioca.FORMAT_CTRL, timeout=None), name, "read", left, timeout
        )
        return list(ctrl.enums)

    async def _op(self, awaitable: Any, name: str, what: str, left: float, timeout: float) -> Any:
        import aioca

        try:
            async with asyncio.timeout(left):
                return await awaitable
        except TimeoutError:
            raise PVTimeout(
                f"PV {name!r} is connected but the {what} did not complete within {timeout:g} s",
                pv=name,
                provider="ca",
            ) from None
        except aioca.CANothing as exc:
            raise PVServerError(
                f"the IOC serving {name!r} answered the {what} with an error: {exc}",
                pv=name,
                provider="ca",
            ) from None

    async def read(self, name: str, timeout: float) -> dict[str, Any]:
        import aioca

        deadline = asyncio.get_running_loop().time() + timeout
        info = await self._connect(name, timeout)
        if not info.read:
            raise PVForbidden(
                f"PV {name!r} does not allow reads from this service (CA access rights)", pv=name
            )
        kind = CA_TYPES[info.datatype] if info.datatype < len(CA_TYPES) else "unknown"
        left = lambda: max(deadline - asyncio.get_running_loop().time(), 0.001)  # noqa: E731
        value = await self._op(
            aioca.caget(name, format=aioca.FORMAT_TIME, timeout=None), name, "read", left(), timeout
        )
        return self._describe(
            name, value, kind, info.count, await self._ctrl(name, kind, left(), timeout)
        )

    def _describe(
        self, name: str, value: Any, kind: str, count: int, choices: list[str] | None
    ) -> dict[str, Any]:
        sev, stat = int(value.severity), int(value.status)
        out: dict[str, Any] = {
            "name": name,
            "provider": "ca",
            "type": kind,
            "count": count,
            "value": plain(value),
            "severity": sev,
            "severity_name": CA_SEVERITIES[sev] if sev < len(CA_SEVERITIES) else str(sev),
            "status": stat,
            "message": CA_STATUSES[stat] if stat < len(CA_STATUSES) else str(stat),
            "timestamp": float(value.timestamp),
        }
        if kind == "string" and count <= 1:
            out["value"] = str(value)
        if choices is not None:
            out["choices"] = choices
            idx = int(value)
            out["label"] = choices[idx] if 0 <= idx < len(choices) else None
        return out

    async def write(self, name: str, value: Any, timeout: float) -> Any:
        import aioca

        deadline = asyncio.get_running_loop().time() + timeout
        info = await self._connect(name, timeout)
        if not info.write:
            raise PVForbidden(
                f"PV {name!r} does not allow writes from this service (CA access rights)", pv=name
            )
        kind = CA_TYPES[info.datatype] if info.datatype < len(CA_TYPES) else "unknown"
        left = lambda: max(deadline - asyncio.get_running_loop().time(), 0.001)  # noqa: E731
        target = coerce(
            name, value, kind, info.count, await self._ctrl(name, kind, left(), timeout)
        )
        await self._op(
            aioca.caput(name, target, wait=True, timeout=None), name, "write", left(), timeout
        )
        return target

    def subscribe(self, name: str, push: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Push each update (and ``{"connected": False}`` on a disconnect); returns the closer."""
        import aioca

        state: dict[str, Any] = {"choices": None, "info": None}

        async def on_value(value: Any) -> None:
            if not getattr(value, "ok", True):
                state["info"] = None
                push({"name": name, "provider": "ca", "connected": False})
                return
            if state["info"] is None:  # (re)connected: learn the type again
                try:
                    info = state["info"] = await aioca.cainfo(name, timeout=2.0)
                    kind = CA_TYPES[info.datatype]
                    state["choices"] = await self._ctrl(name, kind, 2.0, 2.0)
                except Exception:  # noqa: BLE001 - a PV that vanished again: the next event says so
                    return
            info = state["info"]
            push(self._describe(name, value, CA_TYPES[info.datatype], info.count, state["choices"]))

        sub = aioca.camonitor(name, on_value, format=aioca.FORMAT_TIME, notify_disconnect=True)

        def close() -> None:
            sub.close()
            _forget_channel(name)  # a name that never connected stops searching

        return close


def _forget_channel(name: str) -> None:
    """Drop a channel that never connected, so unknown names do not search forever.

    aioca keeps every channel it opened; a gateway fed arbitrary names would
    pile up searching channels. Best effort on aioca's private cache.
    """
    try:
        from aioca import _catools

        cache = _catools._Context.get_channel_cache()
        channels = cache._ChannelCache__channels
        ch = channels.get(name)
        if ch is not None and not ch.connected() and ch.count_subscriptions() == 0:
            del channels[name]
            ch._purge()
    except Exception:  # noqa: BLE001 - an aioca without these internals: keep the channel
        pass


class PVAClient:
    """PV Access via p4p's asyncio client, one context (created on first use, on the loop)."""

    provider = "pva"

    def __init__(self) -> None:
        self._ctx: Any = None

    def context(self) -> Any:
        if self._ctx is None:
            from p4p.client.asyncio import Context

            self._ctx = Context("pva", nt=False)
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    async def _get(self, name: str, timeout: float) -> Any:
        from p4p.client.raw import RemoteError

        try:
            async with asyncio.timeout(timeout):
                return await self.context().get(name)
        except TimeoutError:
            # p4p does not say whether the search or the get was slow; a
            # connected PV answers a get at once, so report it as not found.
            raise PVNotFound(
                f"no PV Access server answered for PV {name!r} within {timeout:g} s "
                "(unknown name, or its server is unreachable)",
                pv=name,
                provider="pva",
            ) from None
        except RemoteError as exc:
            raise PVServerError(
                f"the server of {name!r} answered the read with an error: {exc}",
                pv=name,
                provider="pva",
            ) from None

    @staticmethod
    def _shape(value: Any) -> tuple[str, int, list[str] | None]:
        """(type name, capacity, enum choices) of a PVA value's ``value`` field."""
        if value.getID().startswith("epics:nt/NTEnum"):
            return "enum", 1, list(value.value.choices)
        code = value.type().aspy("value") if "value" in value else None
        if not isinstance(code, str):
            return "structure", 1, None
        array = code.startswith("a")
        kind = PVA_TYPES.get(code[1:] if array else code, "structure")
        return kind, (1 << 20) if array else 1, None  # a PVA array has no fixed capacity

    def describe(self, name: str, value: Any) -> dict[str, Any]:
        kind, _, choices = self._shape(value)
        out: dict[str, Any] = {"name": name, "provider": "pva", "type": kind}
        if choices is not None:
            idx = int(value.value.index)
            out.update(
                value=idx, choices=choices, label=choices[idx] if 0 <= idx < len(choices) else None
            )
        elif kind == "structure":
            out["value"] = plain(value.todict())
        else:
            out["value"] = plain(value.value)
            if isinstance(out["value"], list):
                out["count"] = len(out["value"])
        try:
            sev = int(value.alarm.severity)
            out.update(
                severity=sev,
                severity_name=CA_SEVERITIES[sev] if 0 <= sev < len(CA_SEVERITIES) else str(sev),
                status=int(value.alarm.status),
                message=str(value.alarm.message),
            )
        except AttributeError:
            pass
        try:
            out["timestamp"] = value.timeStamp.secondsPastEpoch + value.timeStamp.nanoseconds * 1e-9
        except AttributeError:
            pass
        return out

    async def read(self, name: str, timeout: float) -> dict[str, Any]:
        return self.describe(name, await self._get(name, timeout))

    async def write(self, name: str, value: Any, timeout: float) -> Any:
        from p4p.client.raw import RemoteError

        deadline = asyncio.get_running_loop().time() + timeout
        current = await self._get(name, timeout)
        kind, count, choices = self._shape(current)
        if kind == "structure":
            raise BadRequest(
                f"PV {name!r} is a structure without a scalar 'value'; it cannot be written here",
                pv=name,
            )
        target = coerce(name, value, kind, count, choices)
        put = {"value.index": target} if kind == "enum" else target
        left = max(deadline - asyncio.get_running_loop().time(), 0.001)
        try:
            async with asyncio.timeout(left):
                await self.context().put(name, put, wait=True)
        except TimeoutError:
            raise PVTimeout(
                f"PV {name!r} is connected but the write did not complete within {timeout:g} s",
                pv=name,
                provider="pva",
            ) from None
        except (ValueError, TypeError) as exc:
            raise BadRequest(
                f"value: {name!r} cannot take {value!r}: {exc}", field="value", pv=name
            ) from None
        except RemoteError as exc:
            raise PVServerError(
                f"the server of {name!r} answered the write with an error: {exc}",
                pv=name,
                provider="pva",
            ) from None
        return target

    def subscribe(self, name: str, push: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        from p4p.client.raw import Disconnected

        async def on_value(value: Any) -> None:
            if isinstance(value, Disconnected):
                push({"name": name, "provider": "pva", "connected": False})
            elif not isinstance(value, Exception):
                push(self.describe(name, value))

        sub = self.context().monitor(name, on_value, notify_disconnect=True)
        return sub.close
