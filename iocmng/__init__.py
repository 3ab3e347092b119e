"""iocmng: an asyncio-native IOC manager for EPICS.

This top-level module is the plugin-author API only::

    from iocmng import TaskBase, JobBase, JobResult
"""

from .base.job import JobBase, JobResult
from .base.task import TaskBase

__all__ = ["JobBase", "JobResult", "TaskBase", "__version__"]

__version__ = "3.0.0.dev0"
