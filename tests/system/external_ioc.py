"""A separate soft IOC process serving "external" PVs, for tests of links to other IOCs.

:class:`ExternalIoc` runs pythonSoftIOC in a subprocess (``python -c``) on
its own loopback-only EPICS ports (:meth:`EpicsPorts.allocate`: its CA
server port comes from the pool this test process's CA client already
searches, so ``aioca`` here reaches it; PVA through :func:`pva_context`).
Records are named exactly as given (no device prefix)::

    ioc = ExternalIoc(tmp_path, {
        "EXT:TEMP": ("ao", 20.0),
        "EXT:VALVE": ("bo", 0, {"ZNAM": "CLOSED", "ONAM": "OPEN"}),
        "EXT:TXT": ("stringout", ""),
    })
    with ioc:  # start() ... stop()
        ...

Each PV is ``(kind, initial_value)`` or ``(kind, initial_value, fields)``;
``fields`` are extra record fields or builder keywords (``EGU``, ``PREC``,
``MDEL``, ``length`` for waveforms, ``options`` for mbbo...). Output kinds
(``ao``, ``bo``, ``longout``, ``stringout``, ``mbbo``, ``waveform``) accept
puts from CA and PVA clients; nothing limits them (no PREC/DRVL/DRVH unless
given). Input kinds (``ai``, ``bi``, ``longin``, ``stringin``) are read-only
(softioc sets DISP=1). Monitors post as EPICS does by default: on every
change of value (add ``{"MDEL": -1}`` to an ao/longout to post on every put).

A service under test learns the IOC's addresses with :func:`merge_link_env`,
which appends them to the service's own (loopback) address lists::

    server.extra_env.update(merge_link_env(server.env(), ioc))

:meth:`ExternalIoc.restart` brings the same PVs back on the same ports, for
reconnection tests. Clients find it again at their own pace: measured here,
a p4p/pvxs monitor within ~5 s whatever the outage; a libca (aioca, pyepics)
channel only at its next search for disconnected channels, as no caRepeater
runs to pass on the restarted IOC's beacons: up to ~10 s after a short
outage, ~40 s after a minute down. Allow for that in timeouts.

Prefer unique names (``conftest.random_prefix()``): this process's CA
client searches every server of the port pool, so two IOCs serving the same
name in one session would be ambiguous.

The ``external_ioc_factory`` fixture stops every IOC it made at teardown;
``tests/system/conftest.py`` imports it, so every system test can use it
(the function has another name than the fixture so that test parameters
named ``external_ioc_factory`` do not shadow an import: ruff F811).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from conftest import EpicsPorts, _purge_ca_channels, wait_for_sync

#: The line the IOC prints (alone) once iocInit() returned: CA and PVA servers are up.
READY = "EXTERNAL-IOC-READY"

#: rsrv's message when the CA server port is taken (it then listens on a random port,
#: where no client of this test session would find it).
_CA_PORT_TAKEN = "Configured TCP port was unavailable"

OUTPUT_KINDS = frozenset({"ao", "bo", "longout", "stringout", "mbbo", "waveform"})
INPUT_KINDS = frozenset({"ai", "bi", "longin", "stringin"})

IOC_SCRIPT = textwrap.dedent(
    f"""
    import json, signal, sys

    from softioc import asyncio_dispatcher, builder, softioc

    OUT = {sorted(OUTPUT_KINDS)!r}
    spec = json.loads(sys.argv[1])
    dispatcher = asyncio_dispatcher.AsyncioDispatcher()
    # No SetDeviceName(): softioc's record names then are the names given, unchanged.
    makers = {{
        "ao": builder.aOut,
        "ai": builder.aIn,
        "bo": builder.boolOut,
        "bi": builder.boolIn,
        "longout": builder.longOut,
        "longin": builder.longIn,
        "stringout": builder.stringOut,
        "stringin": builder.stringIn,
        "waveform": builder.WaveformOut,
    }}
    for name, (kind, initial, fields) in spec.items():
        fields = dict(fields)
        if kind in OUT:
            fields.setdefault("always_update", True)
        if kind == "mbbo":
            builder.mbbOut(name, *fields.pop("options"), initial_value=initial, **fields)
        else:
            makers[kind](name, initial_value=initial, **fields)
    builder.LoadDatabase()
    softioc.iocInit(dispatcher)
    print("{READY}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: softioc.safeEpicsExit(0))
    while True:
        signal.pause()
    """
)

PvSpec = tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]


def _normalize(pvs: Mapping[str, PvSpec]) -> dict[str, tuple[str, Any, dict[str, Any]]]:
    out: dict[str, tuple[str, Any, dict[str, Any]]] = {}
    for name, spec in pvs.items():
        if not name or name.startswith(":"):
            raise ValueError(f"bad record name {name!r}")
        kind, initial, *rest = spec
        if kind not in OUTPUT_KINDS | INPUT_KINDS:
            raise ValueError(f"{name}: unknown record kind {kind!r}")
        fields = dict(rest[0]) if rest else {}
        if kind == "mbbo" and "options" not in fields:
            raise ValueError(f"{name}: an mbbo needs fields['options'] (its state names)")
        out[name] = (kind, initial, fields)
    return out


class ExternalIoc:
    """A pythonSoftIOC subprocess serving ``pvs`` on loopback ports ``ports``.

    Nothing runs until :meth:`start`; it can be stopped and started again
    (same ports, same PVs, initial values again) any number of times.
    """

    def __init__(
        self,
        workdir: Path,
        pvs: Mapping[str, PvSpec],
        ports: EpicsPorts | None = None,
        name: str = "external-ioc",
    ) -> None:
        self.pvs = _normalize(pvs)
        if not self.pvs:
            raise ValueError("an external IOC needs at least one PV")
        self.ports = ports or EpicsPorts.allocate()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- addresses -------------------------------------------------------------------
    @property
    def ca_address(self) -> str:
        """Where a CA client searches for this IOC's PVs (an EPICS_CA_ADDR_LIST entry)."""
        return f"127.0.0.1:{self.ports.ca_server}"

    @property
    def pva_address(self) -> str:
        """Where a PVA client searches for this IOC's PVs (an EPICS_PVA_ADDR_LIST entry)."""
        return f"127.0.0.1:{self.ports.pva_broadcast}"

    def service_env(self) -> dict[str, str]:
        """The EPICS variables a client process needs, besides its own, to reach this IOC.

        Address lists hold this IOC only; use :func:`merge_link_env` to add
        them to a service's own lists rather than replace those.
        """
        return {
            "EPICS_CA_ADDR_LIST": self.ca_address,
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_ADDR_LIST": self.pva_address,
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        }

    # -- the process -----------------------------------------------------------------
    def log(self) -> str:
        """Everything the IOC printed (stdout and stderr, all runs)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 30.0) -> ExternalIoc:
        """Start the IOC and wait until it printed its READY line (after iocInit)."""
        assert not self.alive(), "the external IOC is already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        spec = json.dumps(self.pvs)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-c", IOC_SCRIPT, spec],
                env=self.ports.env(),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

        def this_run() -> str:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")

        def ready() -> bool:
            if not self.alive():
                assert self.proc is not None
                # pytest.fail raises a BaseException: the polling loop does not swallow it
                pytest.fail(
                    f"external IOC exited with {self.proc.returncode} before READY:\n{this_run()}"
                )
            return f"\n{READY}\n" in this_run()

        try:
            wait_for_sync(ready, timeout=timeout, interval=0.05, what="the external IOC's READY")
            if _CA_PORT_TAKEN in this_run():
                pytest.fail(
                    f"CA port {self.ports.ca_server} of the external IOC was taken:\n{this_run()}"
                )
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the IOC calls epicsExit), SIGKILL after ``timeout``; return the exit code.

        Does not purge this process's CA channels (a test may want its
        monitors to see the IOC come back); the ``external_ioc_factory``
        fixture and ``with`` do so before stopping.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, timeout: float = 30.0) -> ExternalIoc:
        """Stop and start again: same ports, same PVs, back to their initial values."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> ExternalIoc:
        if not self.alive():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _purge_ca_channels()
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.alive() else "stopped"
        return (
            f"<ExternalIoc {sorted(self.pvs)} CA {self.ca_address} PVA {self.pva_address} {state}>"
        )


_LOOPBACK_HOSTS = ("127.", "localhost")


def _append(current: str | None, additions: list[str], var: str) -> str:
    entries = (current or "127.0.0.1").split()
    for entry in entries:
        if not entry.startswith(_LOOPBACK_HOSTS):
            raise ValueError(f"{var} holds a non-loopback address {entry!r}: {current!r}")
    for address in additions:
        if address not in entries:
            entries.append(address)
    return " ".join(entries)


def merge_link_env(service_env: Mapping[str, str], *iocs: ExternalIoc) -> dict[str, str]:
    """``service_env`` with the CA and PVA addresses of ``iocs`` appended to its address lists.

    The service keeps reaching its own servers (a missing list counts as
    ``127.0.0.1``: its own default ports); automatic address lists are
    switched off; a non-loopback entry already there is an error.
    """
    env = dict(service_env)
    env["EPICS_CA_ADDR_LIST"] = _append(
        env.get("EPICS_CA_ADDR_LIST"), [i.ca_address for i in iocs], "EPICS_CA_ADDR_LIST"
    )
    env["EPICS_PVA_ADDR_LIST"] = _append(
        env.get("EPICS_PVA_ADDR_LIST"), [i.pva_address for i in iocs], "EPICS_PVA_ADDR_LIST"
    )
    env["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    env["EPICS_PVA_AUTO_ADDR_LIST"] = "NO"
    return env


@pytest.fixture(name="external_ioc_factory")
def external_ioc_factory_fixture(tmp_path: Path) -> Iterator[Callable[..., ExternalIoc]]:
    """Make (and by default start) external IOCs; every one is stopped at teardown.

    ``factory(pvs, ports=None, start=True, timeout=30.0) -> ExternalIoc``.
    """
    made: list[ExternalIoc] = []

    def factory(
        pvs: Mapping[str, PvSpec],
        ports: EpicsPorts | None = None,
        start: bool = True,
        timeout: float = 30.0,
    ) -> ExternalIoc:
        ioc = ExternalIoc(tmp_path / "external_ioc", pvs, ports=ports)
        made.append(ioc)
        if start:
            ioc.start(timeout)
        return ioc

    yield factory
    _purge_ca_channels()  # the test's loop is gone: no CA callbacks into it from disconnects
    for ioc in made:
        ioc.stop()
