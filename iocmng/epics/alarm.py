"""EPICS alarm severities and statuses by name: pure, no dependency.

The names are the strings of EPICS's ``menuAlarmSevr`` and ``menuAlarmStat``
menus (what a record's SEVR/STAT fields show, and what CA and PVA clients
print); the numbers are EPICS's ``alarm.h``, as pythonSoftIOC's
``softioc/alarm.py`` lists them (there as ``MAJOR_ALARM``, ``LINK_ALARM``...).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

__all__ = ["LINK_ALARM", "SYS_CONN_ALARM", "Alarm", "AlarmStatus", "Severity"]


class Severity(IntEnum):
    """EPICS alarm severities (``menuAlarmSevr``); the names are the menu's strings."""

    NO_ALARM = 0
    MINOR = 1
    MAJOR = 2
    INVALID = 3


class AlarmStatus(IntEnum):
    """EPICS alarm statuses (``menuAlarmStat``); the names are the menu's strings."""

    NO_ALARM = 0
    READ = 1
    WRITE = 2
    HIHI = 3
    HIGH = 4
    LOLO = 5
    LOW = 6
    STATE = 7
    COS = 8
    COMM = 9
    TIMEOUT = 10
    HWLIMIT = 11
    CALC = 12
    SCAN = 13
    LINK = 14
    SOFT = 15
    BAD_SUB = 16
    UDF = 17
    DISABLE = 18
    SIMM = 19
    READ_ACCESS = 20
    WRITE_ACCESS = 21


class Alarm(NamedTuple):
    """An alarm a record raises: (status, severity), as EPICS's STAT/SEVR (NSTA/NSEV) pair."""

    status: AlarmStatus
    severity: Severity


#: A value computed from a disconnected link (mirrors of wired inputs, outputs computed from them).
LINK_ALARM = Alarm(AlarmStatus.LINK, Severity.INVALID)
#: The SYS_CONN output while a link is down.
SYS_CONN_ALARM = Alarm(AlarmStatus.LINK, Severity.MAJOR)
