"""iocmng 2.7.9's ``from iocmng.runner import run_ioc`` (see :mod:`iocmng.core.runner`)."""

from .core.runner import run_ioc

__all__ = ["run_ioc"]
