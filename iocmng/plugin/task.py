"""``TaskBase``: a plugin that runs continuously or when its RUN PV is written."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .base import PluginBase, PluginContext, compat_member, observed


class TaskBase(PluginBase, ABC):
    """Base class of tasks.

    ``mode: continuous`` calls :meth:`execute` every ``interval`` seconds while
    ENABLE is 1; ``mode: triggered`` calls :meth:`triggered` (which defaults to
    :meth:`execute`) each time an operator writes 1 to RUN. Any of the methods
    may be ``def`` (run in a worker thread) or ``async def`` (run on the loop).
    """

    kind: ClassVar[str] = "task"

    @abstractmethod
    def initialize(self) -> Any:
        """Prepare resources; called once before the first cycle."""

    @abstractmethod
    def execute(self) -> Any:
        """One cycle of work."""

    @abstractmethod
    def cleanup(self) -> Any:
        """Release resources; called once when the task stops."""

    def triggered(self) -> Any:
        """One triggered run (RUN=1); defaults to :meth:`execute`."""
        return self.execute()

    # -- iocmng 2.7.9's task members (see docs/plugins.md) -------------------------------------
    def _attach(self, ctx: PluginContext) -> None:
        super()._attach(ctx)
        # `running` turns False when the runtime starts cleanup(), as 2.7.9's stop()
        # did before calling it: wrap this instance's cleanup (same call, same result).
        self.__dict__["cleanup"] = observed(
            self.cleanup, before=lambda: self.__dict__.__setitem__("_iocmng_stopping", True)
        )

    @compat_member
    def running(self) -> bool:
        """iocmng 2.7.9's ``self.running``: True from the end of ``initialize()``
        until the task is stopped, paused or not (``while self.running:`` loops
        in the plugin's own threads end when the task stops).

        False during ``initialize()`` (as in 2.7.9), once a continuous task's
        loop is being cancelled, when ``cleanup()`` starts, and after a failed
        ``initialize()``. 2.7.9 also set it False when ``execute()`` raised
        (its loop ended); here an error does not stop the task, so it stays
        True. Read-only: assigning ``self.running`` makes it the plugin's own
        attribute and does not stop anything (set ENABLE to 0 to pause).
        """
        ctx = self._ctx
        if self.__dict__.get("_iocmng_stopping") or str(getattr(ctx, "state", "")) not in (
            "running",
            "paused",
        ):
            return False
        loop_task = getattr(ctx, "task", None)
        if self.mode == "continuous" and (
            loop_task is None or loop_task.done() or loop_task.cancelling()
        ):
            return False
        return True

    @compat_member
    def enabled(self) -> bool:
        """iocmng 2.7.9's ``self.enabled``: the ENABLE PV (True while not paused).
        Read-only: assigning it makes it the plugin's own attribute and does
        not pause the task (in 2.7.9 the ENABLE PV overrode it at the next cycle)."""
        return bool(getattr(self._ctx, "enabled", True))
