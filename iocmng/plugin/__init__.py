"""The plugin author's API: base classes, ``DeclarativeTask``, the context protocol.

Imports no softioc: a plugin module can be imported (by the validation
child, by an author's tests) without an IOC. ``from iocmng import TaskBase``
and 2.7.9's ``iocmng.base.*`` paths lead here.
"""

from .base import PluginBase, PluginContext
from .declarative import DeclarativeTask
from .job import JobBase, JobResult
from .task import TaskBase

__all__ = ["DeclarativeTask", "JobBase", "JobResult", "PluginBase", "PluginContext", "TaskBase"]
