"""``JobBase`` and ``JobResult``: a plugin that runs once per request."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .plugin import PluginBase


@dataclass
class JobResult:
    """The structured outcome of one job run."""

    success: bool
    data: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "data": self.data, "message": self.message}


class JobBase(PluginBase, ABC):
    """Base class of jobs: ``execute()`` runs once per ``POST /jobs/{name}/run``.

    ``execute`` returns a :class:`JobResult` (a plain dict or ``None`` is
    accepted and wrapped as a success). May be ``def`` or ``async def``.
    """

    kind: ClassVar[str] = "job"

    @abstractmethod
    def initialize(self) -> Any:
        """Prepare resources; called once when the job is loaded."""

    @abstractmethod
    def execute(self) -> JobResult:
        """Run the job once and return its result."""

    def cleanup(self) -> Any:
        """Release resources when the job is removed (optional)."""
