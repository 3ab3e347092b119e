"""Author-facing base classes (kept at the original service's import paths)."""

from ..plugin.job import JobBase, JobResult
from ..plugin.task import TaskBase

__all__ = ["JobBase", "JobResult", "TaskBase"]
