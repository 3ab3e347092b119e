"""iocmng: an asyncio-native IOC manager for EPICS.

This top-level module is the plugin-author API only::

    from iocmng import TaskBase, JobBase, JobResult, DeclarativeTask

and, for plugins and scripts written for iocmng 2.7.9, its two other names
(aliases over iocmng's own machinery, see :mod:`iocmng.core`)::

    from iocmng import pv_client, run_ioc
"""

from ._version import __version__
from .core import pv_client
from .core.runner import run_ioc
from .plugin.declarative import DeclarativeTask
from .plugin.job import JobBase, JobResult
from .plugin.task import TaskBase

__all__ = [
    "DeclarativeTask",
    "JobBase",
    "JobResult",
    "TaskBase",
    "__version__",
    "pv_client",
    "run_ioc",
]
