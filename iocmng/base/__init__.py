"""Author-facing base classes (kept at the original service's import paths)."""

from .job import JobBase, JobResult
from .task import TaskBase

__all__ = ["JobBase", "JobResult", "TaskBase"]
