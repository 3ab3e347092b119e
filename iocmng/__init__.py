"""iocmng: an asyncio-native IOC manager for EPICS.

This top-level module is the plugin-author API only::

    from iocmng import TaskBase, JobBase, JobResult, DeclarativeTask
"""

from .base.job import JobBase, JobResult
from .base.task import TaskBase
from .declarative import DeclarativeTask

__all__ = ["DeclarativeTask", "JobBase", "JobResult", "TaskBase", "__version__"]

__version__ = "3.0.0.dev0"
