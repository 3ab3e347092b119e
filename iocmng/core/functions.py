"""iocmng 2.7.9's ``iocmng.core.functions``: ``get_registry()`` and ``register(name, fn)``.

Maps to iocmng's function library, :data:`iocmng.declarative.expression_library.BUILTIN_FUNCTIONS`
(the same names as 2.7.9's: ``abs round sqrt log exp pow floor ceil clamp
mean std variance median rms min max any_of all_of count_true length sum_of
diff last moving_avg derivative``), plus the functions registered here::

    from iocmng.core.functions import get_registry, register

    register("peak_to_peak", lambda v: max(v) - min(v))
    get_registry()["peak_to_peak"]([1, 4, 2])     # 3

What differs from 2.7.9:

- The library functions are iocmng's, with the differences listed in
  :mod:`iocmng.declarative.expressions` (``last(buf)`` is the last element, not a
  one-element list; ``pow`` and ``round`` refuse huge results; ``any_of`` and
  friends look inside a list argument).
- :func:`register` refuses what iocmng's expressions could never call, at once
  rather than at the first evaluation: a name that is not an identifier or
  starts with ``_``, something not callable, and a name of the library
  (2.7.9 let a plugin replace ``mean`` for every other plugin).
- **Registered functions are known to** :func:`iocmng.core.safe_eval.safe_eval`
  **only, not to config.yaml rules and transforms.** A plugin's rules are
  checked when it is added, in a child process that reports the class's
  ``expression_functions``; a process-wide registry would leak one plugin's
  functions into every other plugin's expressions (where a parameter of the
  same name is then refused) and differ between that child and the service.
  Give the plugin class the functions instead, which works in both::

      class MyPlugin(TaskBase):
          expression_functions = {"peak_to_peak": peak_to_peak}

The registry is process-wide, as in 2.7.9: a name registered twice keeps the
second function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..declarative.expression_library import BUILTIN_FUNCTIONS

__all__ = ["get_registry", "register"]

# name -> function, for the names register() added (never a library name).
_registered: dict[str, Callable[..., Any]] = {}
# Bumped by register(), so that safe_eval's cache of compiled expressions
# never serves an expression compiled against an older registry.
_version = 0


def register(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn`` callable as ``name(...)`` from :func:`~iocmng.core.safe_eval.safe_eval`.

    Raises ``ValueError`` if ``name`` is not an identifier, starts with ``_``
    or is a library function's, and ``TypeError`` if ``fn`` is not callable.
    Registering a name again replaces the function (a plugin reloaded).
    """
    global _version
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(
            f"register({name!r}): a function name must be an identifier not starting "
            "with '_' (iocmng's expressions refuse such names)"
        )
    if name in BUILTIN_FUNCTIONS and fn is not BUILTIN_FUNCTIONS[name]:
        raise ValueError(
            f"register({name!r}): {name!r} is a library function and cannot be replaced"
        )
    if not callable(fn):
        raise TypeError(f"register({name!r}): {fn!r} is not callable")
    if name not in BUILTIN_FUNCTIONS:
        _registered[name] = fn
        _version += 1


def get_registry() -> dict[str, Callable[..., Any]]:
    """A copy of the callable names: the library's and the registered ones.

    Changing the returned dict changes nothing here.
    """
    return {**BUILTIN_FUNCTIONS, **_registered}


def version() -> int:
    """Bumped by every :func:`register` (the key of safe_eval's cache)."""
    return _version


def registered() -> tuple[int, dict[str, Callable[..., Any]]]:
    """``(version, copy of the registered functions)``, without the library (for safe_eval)."""
    return _version, dict(_registered)
