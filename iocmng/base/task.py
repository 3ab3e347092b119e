"""2.7.9's import path of ``TaskBase``: :mod:`iocmng.plugin.task`."""

from ..plugin.task import TaskBase

__all__ = ["TaskBase"]
