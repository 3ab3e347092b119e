"""iocmng 2.7.9's ``iocmng.core.safe_eval``: ``safe_eval(expression, variables, extra_functions=None)``.

Maps to :func:`iocmng.declarative.expressions.compile_expression` (iocmng's expression
language, the one of config.yaml rules and transforms) and
:meth:`~iocmng.declarative.expressions.Expression.evaluate`, with the functions of
:mod:`iocmng.core.functions` (library + registered) and ``extra_functions``::

    from iocmng.core.safe_eval import safe_eval

    safe_eval("chlrfd == 0 and llrf1 == 1", {"chlrfd": 0, "llrf1": 1})      # True
    safe_eval("mean(buf) > 0.5", {"buf": [0.1, 0.9, 0.8]})                   # True
    safe_eval("double(x)", {"x": 5}, extra_functions={"double": lambda v: 2 * v})   # 10

Errors are 2.7.9's kinds: ``SyntaxError`` when the text does not parse,
``ValueError`` ("Unsafe expression -- ...") for a refused construct or an
unregistered function, ``NameError`` for a variable missing from
``variables``, and the evaluation's own exception (``ZeroDivisionError``...)
when it fails, with a note naming the expression.

What differs from 2.7.9 (iocmng's language is the stricter and the larger):

- also allowed: ``** // in``, chained comparisons, keyword arguments;
- refused: ``str % args``, a ``**``/``pow()`` result over 4096 bits, strings or
  lists repeated past 10,000 items, any value built past the caps of
  :mod:`iocmng.declarative.expression_library` (strings of 10,000 characters, lists of
  100,000 elements or 32 levels deep), a function used as a value (``abs``
  without a call), a variable read in the expression that is named like a
  function (2.7.9 let the variable hide the function), an ``extra_functions``
  entry replacing a library function, and expressions over 4000 characters;
- the library's own differences: see :mod:`iocmng.core.functions`.

A compiled expression is cached (per text and registry state), so calling
``safe_eval`` in a loop does not parse the text every time unless
``extra_functions`` is given.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Mapping
from typing import Any

from ..declarative.expression_library import (
    BUILTIN_FUNCTIONS,
    ExpressionError,
    ExpressionEvaluationError,
)
from ..declarative.expressions import Expression, compile_expression
from . import functions as _functions

__all__ = ["safe_eval"]


def safe_eval(
    expression: str,
    variables: Mapping[str, Any],
    extra_functions: Mapping[str, Callable[..., Any]] | None = None,
) -> Any:
    """Evaluate ``expression`` with ``variables`` (name -> value) and the registered functions.

    ``extra_functions`` (name -> callable) are added for this call; they may
    not replace a library function. Raises ``SyntaxError``, ``ValueError``
    (unsafe or unregistered), ``NameError`` (undefined variable) or the
    evaluation's own exception, as 2.7.9 did.
    """
    if extra_functions:
        compiled = _compile(expression, {**_functions.registered()[1], **extra_functions})
    else:  # the registry is copied only when the cache misses
        compiled = _compile_cached(expression, _functions.version())
    missing = sorted(compiled.names - variables.keys())
    if missing:
        raise NameError(f"name {missing[0]!r} is not defined", name=missing[0])
    try:
        return compiled.evaluate(variables)
    except ExpressionEvaluationError as exc:
        cause = exc.__cause__
        if cause is None:
            raise
        cause.add_note(f"while evaluating the expression {expression!r}")
        raise cause from None


@functools.lru_cache(maxsize=512)
def _compile_cached(expression: str, version: int) -> Expression:
    # ``version`` is part of the key only: a register() call makes a new one.
    return _compile(expression, _functions.registered()[1])


def _compile(expression: str, table: Mapping[str, Callable[..., Any]]) -> Expression:
    """Compile ``expression``; the variables are the names it reads (checked per call)."""
    if not isinstance(expression, str):
        raise ValueError(
            f"Unsafe expression -- an expression must be a string, not {type(expression).__name__}"
        )
    tree = ast.parse(expression.strip(), mode="eval")  # SyntaxError, as in 2.7.9
    called = {
        id(n.func): n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    for name in sorted(set(called.values())):
        if name not in BUILTIN_FUNCTIONS and name not in table:
            raise ValueError(f"Unsafe expression -- function {name!r} is not registered")
    # Every name the expression reads is a variable for the compiler, so that
    # an undefined one is a NameError of the call rather than a refusal here;
    # the names of functions are left out (a function used as a value is refused).
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}
    names = {n for n in read if n not in BUILTIN_FUNCTIONS and n not in table}
    try:
        return compile_expression(expression, names, functions=table)
    except ExpressionError as exc:
        raise ValueError(f"Unsafe expression -- {exc.reason}") from exc
