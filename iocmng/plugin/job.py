"""``JobBase`` and ``JobResult``: a plugin that runs once per request."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import PluginBase, PluginContext, compat_member, observed


@dataclass
class JobResult:
    """The structured outcome of one job run."""

    success: bool
    data: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "data": self.data, "message": self.message}


def describe(exc: BaseException) -> str:
    """An exception as a failed run's message and a plugin's ``last_error`` read it: ``"Type: text"``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def normalize_result(value: Any) -> JobResult:
    """What ``execute()`` returned as a :class:`JobResult`: a JobResult, a dict shaped like
    one (``success``, ``data``, ``message``), another dict (the data of a success),
    a bool, ``None`` (success) or any other value (``{"result": value}``)."""
    if isinstance(value, JobResult):
        return value
    if value is None:
        return JobResult(True, {}, "")
    if isinstance(value, dict):
        if "success" in value:
            return JobResult(
                bool(value["success"]), dict(value.get("data") or {}), str(value.get("message", ""))
            )
        return JobResult(True, value, "")
    if isinstance(value, bool):
        return JobResult(value, {}, "")
    return JobResult(True, {"result": value}, "")


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

    # -- iocmng 2.7.9's job members (see docs/plugins.md) --------------------------------------
    def _attach(self, ctx: PluginContext) -> None:
        super()._attach(ctx)
        # Keep the outcome of each run for `last_result`: wrap this instance's
        # execute (same call, same result or exception).
        execute = self.execute

        def keep(result: Any) -> None:
            self.__dict__["_iocmng_last_result"] = normalize_result(result)

        def failed(exc: BaseException) -> None:
            self.__dict__["_iocmng_last_result"] = JobResult(False, {}, describe(exc))

        self.__dict__["execute"] = observed(execute, after=keep, failed=failed)

    @compat_member
    def last_result(self) -> JobResult | None:
        """iocmng 2.7.9's ``self.last_result``: the :class:`JobResult` of the last
        completed run (``None`` before the first): what ``execute()`` returned, as
        the REST answer reports it (a dict or ``None`` wrapped), or a failure
        with the exception (``"RuntimeError: ..."``; 2.7.9: its text only).

        Inside ``execute()`` it is the previous run's result, as in 2.7.9. A run
        that timed out is recorded when its ``execute()`` ends (a sync one keeps
        its thread; an async one is cancelled: ``CancelledError``). Our
        ``JobResult`` has no ``timestamp`` (2.7.9's had one).
        """
        return self.__dict__.get("_iocmng_last_result")
