"""``DeclarativeTask``: a task whose behaviour is all in config.yaml (links, rules, transforms, latches).

A plugin directory with a config.yaml and no ``.py`` file runs as this class.
Plugins written for iocmng 2.7.9 may also subclass it::

    from iocmng import DeclarativeTask

    class MyInterlock(DeclarativeTask):
        pass

and ``iocmng-run -m iocmng.declarative -c DeclarativeTask --config config.yaml ...``
runs a config alone.
"""

from __future__ import annotations

from typing import Any

from .task import TaskBase


class DeclarativeTask(TaskBase):
    """A task with no code of its own: iocmng evaluates its config's logic every cycle."""

    def initialize(self) -> Any:
        return None

    async def execute(self) -> Any:
        return None

    def cleanup(self) -> Any:
        return None
