"""CA and PVA values as plain Python: what links deliver to plugins and what the
blocking client's monitors hand over (pure: no I/O, no EPICS import)."""

from __future__ import annotations

from typing import Any


def plain_value(value: Any) -> Any:
    """A CA/PVA value (aioca's augmented types, numpy) as a plain Python scalar, string or list."""
    if getattr(value, "ndim", 0):
        return value.tolist()
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    return value


def is_pva_enum(value: Any) -> bool:
    try:
        return bool(value.getID().startswith("epics:nt/NTEnum"))
    except AttributeError:
        return False


def pva_value(value: Any, enum: bool) -> Any:
    """The ``value`` field of a raw p4p Value as plain Python (an NTEnum: its index)."""
    if enum:
        return int(value.value.index)
    try:
        return plain_value(value.value)
    except (AttributeError, KeyError):  # a structure without a value field: the whole Value
        return value
