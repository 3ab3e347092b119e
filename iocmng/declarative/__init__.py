"""config.yaml's behaviour without code: expressions, their function library, logic, links.

The expression compiler and :mod:`~iocmng.plugin.declarative.logic` are pure (no
I/O, no records); links describe PV connections for the runtime's wiring.

``from iocmng.declarative import DeclarativeTask`` (2.7.9's path) still
works: the class lives in :mod:`iocmng.plugin.declarative` and is looked up
on first use, so this package does not import the plugin layer.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "DeclarativeTask":
        from ..plugin.declarative import DeclarativeTask

        return DeclarativeTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
