"""EPICS access security for the service's own records (CA and PVA alike).

``DISP=1`` alone does not make a record read-only: a client may write
``.DISP`` itself (EPICS exempts that field from the check), clear it and
then write the record. Access security is checked by the CA server (rsrv)
and the PVA server (pvxs QSRV) before a put reaches the database, so the
bridge gives every record an access security group and loads the file below
before ``iocInit``:

* ``DEFAULT`` (every record without an ``ASG``: outputs, STATUS, MESSAGE,
  CYCLE_COUNT, VERSION, CONN_*): read, never write;
* ``WRITABLE`` (inputs, ENABLE, RUN, CLEAR, RESET): ``RULE(0, WRITE)`` grants
  writes to level-0 fields only. In every record type the bridge builds
  (ao, bo, longout, stringout) that is VAL alone; DESC, SCAN, FLNK, DISP,
  PROC and every other field are level 1 (the default of a dbd ``field``).

Default-deny: a record added later without ``ASG`` is read-only to clients.
The service's own updates are not affected: they go through ``dbPut`` in
this process, below the servers' access checks.

The file has no hosts or users and never changes, so it lives in a private
temporary file only while ``iocInit`` reads it (``asInit`` runs inside
``iocInit``); nothing is left behind. A site that wants host and user rules
names its own file in ``IOCMNG_ACF``; it must define the two groups.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SettingsError

#: The ``ASG`` field value of the records clients may write (VAL only).
WRITABLE = "WRITABLE"

ACF = """\
# iocmng: access security of the service's own records (iocmng/epics/access_security.py)
ASG(DEFAULT) {
    RULE(1, READ)
}
ASG(WRITABLE) {
    RULE(1, READ)
    RULE(0, WRITE)
}
"""


def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """dbCore and Com, as loaded by epicscorelibs (our own handles: its objects keep their prototypes)."""
    from epicscorelibs.ioc import Com, dbCore

    db = ctypes.CDLL(dbCore._name)
    db.asSetFilename.argtypes = (ctypes.c_char_p,)
    db.asSetFilename.restype = ctypes.c_int
    return db, ctypes.CDLL(Com._name)


@contextmanager
def access_security_file(site: Path | None = None) -> Iterator[str]:
    """Name :data:`ACF`, or a site's file ``site``, to EPICS (``asSetFilename``) for the
    ``iocInit`` run inside the block.

    Yields the file's path; a temporary file of :data:`ACF` is removed when the block ends.
    """
    if site is not None:
        dbCore, _ = _libs()
        dbCore.asSetFilename(str(site).encode())
        yield str(site)
        return
    fd, path = tempfile.mkstemp(prefix="iocmng-", suffix=".acf")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(ACF)
        dbCore, _ = _libs()
        dbCore.asSetFilename(path.encode())  # copies the name; asInit (in iocInit) reads the file
        yield path
    finally:
        os.unlink(path)


def check_active(site: Path | None = None) -> None:
    """Raise unless access security is on (after ``iocInit``).

    A file ``asInit`` cannot read fails ``iocInit``, which pythonSoftIOC does
    not report; without this check the IOC would be left half-started. For a
    site's file (``IOCMNG_ACF``) it is a :class:`~iocmng.errors.SettingsError`.
    """
    _, Com = _libs()
    if not ctypes.c_int.in_dll(Com, "asActive").value:
        if site is not None:
            raise SettingsError(
                f"IOCMNG_ACF={str(site)!r}: EPICS could not use it (asInit failed: its message, "
                "e.g. 'syntax error at line N', is above); mend the file or unset IOCMNG_ACF"
            )
        raise RuntimeError(
            "EPICS access security is not active after iocInit (iocInit or its asInit failed: "
            "see the EPICS messages above); refusing to serve records that clients could write"
        )
