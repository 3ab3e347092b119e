"""``TaskBase``: a plugin that runs continuously or when its RUN PV is written."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from .plugin import PluginBase


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
