"""iocmng 2.7.9's ``iocmng.core.pv_client``: blocking get/put/monitor of any PV, over CA or PVA.

Maps to iocmng's asynchronous clients, :class:`iocmng.epics.pvclient.CAClient`
(aioca) and :class:`iocmng.epics.pvclient.PVAClient` (p4p), the clients of the
REST PV gateway. They run on a **private event loop in a thread of this
module** ("iocmng-pv-client", started at the first call, stopped by
:func:`close`), so the blocking functions work from any thread without an
event loop: a plugin's ``def`` methods (worker threads), scripts, and the
monitor callbacks::

    from iocmng import pv_client

    pv_client.put("SR:RF:SETPOINT", 1.5)
    value = pv_client.get("SR:RF:READBACK", timeout=2.0)
    key = pv_client.monitor("SR:RF:READBACK", lambda v: print(v))
    pv_client.unmonitor(key)

On a thread that runs an event loop (an ``async def`` method of a plugin),
:func:`get` and :func:`put` raise ``RuntimeError`` instead of stalling the
loop (and every plugin and the IOC with it): ``await`` :func:`get_async` /
:func:`put_async` there. The other functions do not block and work anywhere.

What differs from 2.7.9:

- The default protocol is the service's, ``IOCMNG_LINK_PROTOCOL`` (or 2.7.9's
  ``IOCMNG_PVA``), CA when neither is set -- 2.7.9 defaulted to PVA; ``init(pva=...)``
  and ``run_ioc(pva=...)`` choose as before. CA goes through aioca, not pyepics.
- Values come as links deliver them to plugins: numbers, strings, arrays as
  lists (not numpy arrays), an enum as its index (CA and PVA alike), a PVA
  structure without ``value`` as the p4p ``Value``.
- :func:`put` checks the value against the PV's type first (a number for a
  numeric PV, a string for a string PV, an index or a choice for an enum,
  integer ranges) and raises ``ValueError`` naming the problem; pyepics and
  p4p converted silently. It waits for the write to complete (put-callback):
  a record that processes for longer than ``timeout`` (a motor move) raises
  ``TimeoutError`` after the value was written.
- Errors are builtin types with iocmng's message, the iocmng error chained
  as ``__cause__``: no answer or no completion in time -> ``TimeoutError``,
  a value the PV cannot take -> ``ValueError``, refused by access rights ->
  ``PermissionError``, the server answered with an error -> ``RuntimeError``.
- Monitor callbacks run one at a time in one thread of this module
  ("iocmng-pv-callbacks"), in order; a callback may call :func:`get` and
  :func:`put`. An exception in a callback is logged, not raised.
  ``conn_callback(True)`` comes before the first value of each connection,
  ``conn_callback(False)`` on each loss of a connection, for CA and PVA alike
  (never for a PV that has not connected yet).
- :func:`active_monitors` maps each key to the PV name (2.7.9: the
  subscription object's text).
"""

from __future__ import annotations

from ..epics import blocking_client
from ..epics.blocking_client import *  # noqa: F403 (the whole API, under 2.7.9's path)

__all__: list[str] = []
__all__ += blocking_client.__all__
