"""2.7.9's import path of ``JobBase`` and ``JobResult``: :mod:`iocmng.plugin.job`."""

from ..plugin.job import JobBase, JobResult

__all__ = ["JobBase", "JobResult"]
