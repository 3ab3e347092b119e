"""The expression language's limits, errors and function library.

Split from :mod:`iocmng.declarative.expressions` (which parses, checks and compiles
expressions); see that module's docstring for the language itself.
"""

from __future__ import annotations

import math
import operator
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from ..errors import IocmngError

#: Longest expression text accepted, in characters.
MAX_LENGTH = 4000
#: Most syntax nodes in one expression.
MAX_NODES = 500
#: Deepest nesting of syntax nodes (the checker and compiler recurse).
MAX_DEPTH = 100
#: Largest integer constant, in bits (EPICS integers are at most 64 bits).
MAX_INT_BITS = 64
#: Longest string constant.
MAX_STRING_LENGTH = 1000
#: Largest integer an expression builds (by ``* ** + %`` or a function), in bits.
MAX_POW_BITS = 4096
#: Longest string or list built by one ``*`` repetition.
MAX_SEQUENCE_LENGTH = 10_000
#: Longest string an expression builds (by ``+``, ``*`` or a function).
MAX_STRING_CHARS = 10_000
#: Most elements of a list or tuple an expression builds, counted through nested
#: lists (``[[0] * 10] * 10`` holds 110); a long string or integer inside counts
#: one more per :data:`BYTES_PER_ELEMENT` bytes; a numpy array counts its ``size``.
MAX_ELEMENTS = 100_000
#: Bytes of a string or integer inside a list counted as one more element.
BYTES_PER_ELEMENT = 100
#: Deepest nesting of lists and tuples an expression builds (``[[0]]`` is 2).
MAX_NESTING = 32
#: Longest chain of transforms each reading the result of the one before.
MAX_TRANSFORM_CHAIN = 32
#: Seconds one evaluation of a plugin's transforms and rules together may take.
EVALUATION_BUDGET = 0.5
#: Largest ``ndigits`` of ``round()``, either sign.
MAX_ROUND_DIGITS = 100


class ExpressionError(IocmngError):
    """An expression is refused: syntax error, forbidden construct, unknown name or function.

    ``expression`` is the text; the message names it and the construct.
    """

    status = 422
    title = "Invalid expression"

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(f"expression {expression!r}: {reason}", expression=expression)
        self.expression = expression
        self.reason = reason


class ExpressionEvaluationError(ExpressionError):
    """Evaluating a valid expression failed (division by zero, a missing value, a bad type...).

    The original exception is chained as ``__cause__``.
    """

    title = "Expression evaluation failed"


class EvaluationBudgetExceeded(ExpressionEvaluationError):
    """One evaluation of a plugin's transforms and rules took longer than its budget.

    ``expression`` is the one being evaluated when the budget ran out; the
    evaluation stops there (see :meth:`iocmng.declarative.logic.Logic.evaluate`).
    """


# ---------------------------------------------------------------------------
# Value bounds: every value an expression builds is checked as it is built
# ---------------------------------------------------------------------------

#: The deadline (a ``time.perf_counter()`` value) of the evaluation under way in this
#: context; the slow paths of the operator helpers check it. Set by Logic.evaluate.
_deadline: ContextVar[float] = ContextVar("iocmng_expression_deadline", default=math.inf)


class OverBudget(Exception):
    """Raised by a helper past the deadline; :class:`~iocmng.declarative.expressions.Expression` names the expression."""


def set_deadline(deadline: float) -> Token[float]:
    """Start a budget in this context: helpers raise :class:`OverBudget` after ``deadline``."""
    return _deadline.set(deadline)


def reset_deadline(token: Token[float]) -> None:
    _deadline.reset(token)


def _spend() -> None:
    """Raise :class:`OverBudget` if the evaluation under way is past its deadline."""
    if time.perf_counter() > _deadline.get():
        raise OverBudget()


_UNIT_BITS = 8 * BYTES_PER_ELEMENT
_WALKED = (list, tuple, deque, set, frozenset)


def _too_big(what: str) -> ValueError:
    return ValueError(
        f"{what} exceeds the limit of {MAX_ELEMENTS} elements (nested lists counted through)"
    )


def _elements(value: Any, limit: int = MAX_ELEMENTS, depth: int = 0) -> int:
    """Elements of ``value`` counted through nested lists, as :data:`MAX_ELEMENTS` defines them.

    Raises ValueError past ``limit`` elements, :data:`MAX_NESTING` levels (below
    ``depth`` levels of an enclosing literal), a string over
    :data:`MAX_STRING_CHARS` or an integer over :data:`MAX_POW_BITS` bits inside.
    The walk stops as soon as ``limit`` is passed, so it visits at most ``limit``
    elements: a list repeated by reference counts each time it appears.
    """
    total = 0
    stack = [(value, depth)]
    pop, push = stack.pop, stack.append
    while stack:
        v, d = pop()
        t = type(v)
        if t is list or t is tuple or isinstance(v, _WALKED) or isinstance(v, dict):
            d += 1
            if d > MAX_NESTING:
                raise ValueError(f"a list nested more than {MAX_NESTING} levels deep")
            total += len(v)
            if total > limit:
                raise _too_big("a list")
            for e in v.values() if isinstance(v, dict) else v:
                te = type(e)
                if te is float or te is bool or e is None:
                    continue
                if te is int:
                    bits = e.bit_length()
                    if bits > _UNIT_BITS:
                        if bits > MAX_POW_BITS:
                            raise ValueError(
                                f"an integer of {bits} bits exceeds the {MAX_POW_BITS}-bit limit"
                            )
                        total += bits // _UNIT_BITS
                    continue
                push((e, d))
        elif t is str or t is bytes:
            if len(v) > MAX_STRING_CHARS:
                raise ValueError(
                    f"a string of {len(v)} characters exceeds the limit of {MAX_STRING_CHARS}"
                )
            total += len(v) // BYTES_PER_ELEMENT
        elif t is int:
            if v.bit_length() > MAX_POW_BITS:
                raise ValueError(
                    f"an integer of {v.bit_length()} bits exceeds the {MAX_POW_BITS}-bit limit"
                )
            total += v.bit_length() // _UNIT_BITS
        else:
            ndim = getattr(v, "ndim", None)  # a numpy array (or scalar)
            if isinstance(ndim, int) and ndim:
                if d + ndim > MAX_NESTING:
                    raise ValueError(f"an array nested more than {MAX_NESTING} levels deep")
                total += int(v.size)
        if total > limit:
            raise _too_big("a list")
    return total


def check_value(value: Any) -> Any:
    """``value``, if within the bounds of a value an expression builds; else ValueError.

    Integers: at most :data:`MAX_POW_BITS` bits; strings: at most
    :data:`MAX_STRING_CHARS` characters; lists, tuples, arrays: at most
    :data:`MAX_ELEMENTS` elements and :data:`MAX_NESTING` levels.
    """
    t = type(value)
    if t is float or t is bool or value is None:
        return value
    if t is int:
        if value.bit_length() > MAX_POW_BITS:
            raise ValueError(
                f"an integer of {value.bit_length()} bits exceeds the {MAX_POW_BITS}-bit limit"
            )
        return value
    if t is str:
        if len(value) > MAX_STRING_CHARS:
            raise ValueError(
                f"a string of {len(value)} characters exceeds the limit of {MAX_STRING_CHARS}"
            )
        return value
    _spend()
    _elements(value)
    return value


def _is_array(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def _check_broadcast(a: Any, b: Any) -> None:
    """Before an operation on a numpy array: refuse a result (broadcast) over :data:`MAX_ELEMENTS`."""
    import numpy as np  # imported already: an operand is an array

    for v in (a, b):
        if not _is_array(v):
            _elements(v)  # a list operand is converted by numpy: bound it first
    try:
        shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    except ValueError:
        return  # the operation itself raises
    if math.prod(shape) > MAX_ELEMENTS or len(shape) > MAX_NESTING:
        raise ValueError(f"an array of shape {shape} exceeds the limit of {MAX_ELEMENTS} elements")


def _generic(op: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    """The slow path of the helpers: arrays checked before, anything else after the operation."""
    _spend()
    if _is_array(a) or _is_array(b):
        _check_broadcast(a, b)
    return check_value(op(a, b))


def _int_bits(result: int) -> int:
    if result.bit_length() > MAX_POW_BITS:
        raise ValueError(
            f"the result of {result.bit_length()} bits exceeds the {MAX_POW_BITS}-bit limit"
        )
    return result


# ---------------------------------------------------------------------------
# The function library
# ---------------------------------------------------------------------------


def _as_list(values: Any) -> list[Any]:
    """``values`` as a list: a list, tuple, deque or numpy array as its items, a scalar as ``[v]``."""
    if isinstance(values, list):
        return values
    if isinstance(values, str | bytes | bytearray | Mapping):
        return [values]
    try:
        return list(values)
    except TypeError:  # a scalar (numpy 0-d arrays included)
        return [values]


def _flatten(args: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        out.extend(_as_list(a))
    return out


def _safe_add(a: Any, b: Any) -> Any:
    """``a + b``, refusing a result over the value bounds (checked before concatenating)."""
    ta, tb = type(a), type(b)
    if ta is float:  # the fast paths: numbers (an int result is checked after: addition is cheap)
        if tb is float or tb is int:
            return a + b
    elif ta is int:
        if tb is int:
            return _int_bits(a + b)
        if tb is float:
            return a + b
    if ta is tb and (ta is str or ta is bytes):  # short: no deadline check needed
        if len(a) + len(b) > MAX_STRING_CHARS:
            raise ValueError(
                f"a string of {len(a) + len(b)} characters exceeds the limit of {MAX_STRING_CHARS}"
            )
        return a + b
    if ta is tb and (ta is list or ta is tuple):
        _spend()
        _elements(b, MAX_ELEMENTS - _elements(a))
        return a + b
    return _generic(operator.add, a, b)


def _repeat_count(seq: Any, n: Any) -> int | None:
    """``n`` as a repeat count of the sequence ``seq`` (None: not a repetition)."""
    if not isinstance(seq, str | bytes | list | tuple) or isinstance(
        n, str | bytes | list | tuple | float
    ):
        return None
    try:
        return operator.index(n)
    except TypeError:
        return None


def _safe_mul(a: Any, b: Any) -> Any:
    """``a * b``, refusing a result over the value bounds (checked before multiplying).

    A repetition is also refused over :data:`MAX_SEQUENCE_LENGTH` items.
    """
    ta, tb = type(a), type(b)
    if ta is float:
        if tb is float or tb is int:
            return a * b
    elif ta is int:
        if tb is int:
            if a.bit_length() + b.bit_length() > MAX_POW_BITS:
                raise ValueError(
                    f"a product of {a.bit_length()}- and {b.bit_length()}-bit integers "
                    f"exceeds the {MAX_POW_BITS}-bit limit"
                )
            return a * b
        if tb is float:
            return a * b
    for seq, count in ((a, b), (b, a)):
        n = _repeat_count(seq, count)
        if n is None:
            continue
        _spend()
        if n <= 0:
            return seq * n
        if len(seq) * n > MAX_SEQUENCE_LENGTH:
            raise ValueError(
                f"repetition of {len(seq)} items {n} times exceeds {MAX_SEQUENCE_LENGTH} items"
            )
        if isinstance(seq, str | bytes):
            if len(seq) * n > MAX_STRING_CHARS:
                raise ValueError(
                    f"a string of {len(seq) * n} characters exceeds the limit of {MAX_STRING_CHARS}"
                )
        else:
            _elements(seq, MAX_ELEMENTS // n)  # raises when n copies would pass MAX_ELEMENTS
        return seq * n
    return _generic(operator.mul, a, b)


def _safe_pow(base: Any, exp: Any, mod: Any = None) -> Any:
    """``pow`` refusing integer results over :data:`MAX_POW_BITS` bits (checked before)."""
    tb, te = type(base), type(exp)
    if mod is None and (tb is float or tb is int) and (te is float or te is int):
        if (
            tb is int
            and te is int
            and exp > 0
            and abs(base) > 1
            and base.bit_length() * exp > MAX_POW_BITS
        ):
            raise ValueError(f"{base} ** {exp} exceeds the {MAX_POW_BITS}-bit limit")
        return base**exp  # the bound on the integer case holds for the result
    if mod is None and isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if base.bit_length() * exp > MAX_POW_BITS:
            raise ValueError(f"{base} ** {exp} exceeds the {MAX_POW_BITS}-bit limit")
    if mod is not None:
        _spend()
        return check_value(pow(base, exp, mod))
    return _generic(pow, base, exp)


def _safe_mod(a: Any, b: Any) -> Any:
    """``a % b`` for numbers only (``str % args`` formatting can build huge strings)."""
    ta = type(a)
    if (ta is float or ta is int) and (type(b) is float or type(b) is int):
        return a % b
    if isinstance(a, str | bytes):
        raise TypeError("string formatting with % is not supported")
    return _generic(operator.mod, a, b)


def _round(value: Any, ndigits: int | None = None) -> Any:
    """``round(value[, ndigits])`` with ``|ndigits|`` at most :data:`MAX_ROUND_DIGITS`."""
    if ndigits is None:
        return round(value)
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round(): ndigits {ndigits} exceeds {MAX_ROUND_DIGITS}")
    return round(value, ndigits)


def _clamp(value: Any, low: Any, high: Any) -> Any:
    """``value`` limited to ``[low, high]``."""
    return max(low, min(high, value))


def _mean(values: Any) -> float:
    """Arithmetic mean; 0.0 for an empty buffer."""
    vals = _as_list(values)
    return sum(vals) / len(vals) if vals else 0.0


def _variance(values: Any) -> float:
    """Population variance (divides by n); 0.0 for fewer than 2 values."""
    vals = _as_list(values)
    if len(vals) < 2:
        return 0.0
    m = sum(vals) / len(vals)
    return sum((x - m) ** 2 for x in vals) / len(vals)


def _std(values: Any) -> float:
    """Population standard deviation; 0.0 for fewer than 2 values."""
    return math.sqrt(_variance(values))


def _median(values: Any) -> Any:
    """Median (mean of the two middle values for an even count); 0.0 when empty."""
    vals = sorted(_as_list(values))
    n = len(vals)
    if n == 0:
        return 0.0
    mid = n // 2
    return vals[mid] if n % 2 else (vals[mid - 1] + vals[mid]) / 2.0


def _rms(values: Any) -> float:
    """Root mean square; 0.0 when empty."""
    vals = _as_list(values)
    return math.sqrt(sum(x * x for x in vals) / len(vals)) if vals else 0.0


def _min(*args: Any, **kwargs: Any) -> Any:
    """``min`` of several values, or of one list/buffer (one scalar is returned as is)."""
    return min(_as_list(args[0]) if len(args) == 1 else args, **kwargs)


def _max(*args: Any, **kwargs: Any) -> Any:
    """``max`` of several values, or of one list/buffer (one scalar is returned as is)."""
    return max(_as_list(args[0]) if len(args) == 1 else args, **kwargs)


def _any_of(*args: Any) -> bool:
    """True if any argument (or any element of a list argument) is true."""
    return any(_flatten(args))


def _all_of(*args: Any) -> bool:
    """True if every argument (and every element of a list argument) is true."""
    return all(_flatten(args))


def _count_true(*args: Any) -> int:
    """How many arguments (elements of list arguments) are true."""
    return sum(1 for a in _flatten(args) if a)


def _length(values: Any) -> int:
    """Number of elements (1 for a scalar)."""
    return len(_as_list(values))


def _sum_of(values: Any) -> Any:
    """Sum of the elements."""
    return sum(_as_list(values))


def _diff(values: Any) -> list[Any]:
    """First differences ``[v1-v0, v2-v1, ...]`` (one fewer element)."""
    vals = _as_list(values)
    return [vals[i] - vals[i - 1] for i in range(1, len(vals))]


_NO_N = object()


def _last(values: Any, n: Any = _NO_N) -> Any:
    """``last(buf)``: the last element; ``last(buf, n)``: a list of the last ``n`` elements."""
    vals = _as_list(values)
    if n is _NO_N:
        if not vals:
            raise ValueError("last() of an empty buffer")
        return vals[-1]
    n = int(n)
    if n < 0:
        raise ValueError(f"last(): n must be >= 0, got {n}")
    return vals[-n:] if n else []


def _moving_avg(values: Any, window: Any = None) -> float:
    """Mean of the last ``window`` elements (all of them when ``window`` is None); 0.0 when empty."""
    vals = _as_list(values)
    if window is not None:
        window = int(window)
        if window < 1:
            raise ValueError(f"moving_avg(): window must be >= 1, got {window}")
        vals = vals[-window:]
    return sum(vals) / len(vals) if vals else 0.0


def derivative(values: Any, time_base: Any = None) -> list[float]:
    """Rate of change of a buffer, one element per consecutive pair of samples.

    - ``derivative(buf)``: ``buf`` holds plain values, each sample one time unit
      apart: the first differences (the reference's behaviour).
    - ``derivative(buf, dt)``: samples ``dt`` seconds apart (a number):
      differences divided by ``dt``.
    - ``derivative(buf, times)``: ``times`` is a list of timestamps, as long as
      ``buf``: ``(v[i]-v[i-1]) / (t[i]-t[i-1])``.
    - ``derivative(pairs)``: ``pairs`` holds ``(time, value)`` pairs.

    The latest rate is ``last(derivative(...))``. Timestamps must increase
    strictly; an equal or earlier timestamp is an error, not an infinite rate.
    """
    vals = _as_list(values)
    if time_base is None:
        if vals and all(isinstance(v, tuple | list) and len(v) == 2 for v in vals):
            times = [v[0] for v in vals]
            vals = [v[1] for v in vals]
        else:
            return _diff(vals)
    elif isinstance(time_base, int | float) and not isinstance(time_base, bool):
        if time_base <= 0:
            raise ValueError(f"derivative(): the time step must be > 0, got {time_base}")
        return [d / time_base for d in _diff(vals)]
    else:
        times = _as_list(time_base)
        if len(times) != len(vals):
            raise ValueError(f"derivative(): {len(vals)} values but {len(times)} timestamps")
    out = []
    for i in range(1, len(vals)):
        dt = times[i] - times[i - 1]
        if dt <= 0:
            raise ValueError(
                f"derivative(): timestamps do not increase ({times[i - 1]} then {times[i]})"
            )
        out.append((vals[i] - vals[i - 1]) / dt)
    return out


#: The library every expression can call, by name (the reference's set).
BUILTIN_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    # math
    "abs": abs,
    "round": _round,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "pow": _safe_pow,
    "floor": math.floor,
    "ceil": math.ceil,
    "clamp": _clamp,
    # statistics
    "mean": _mean,
    "std": _std,
    "variance": _variance,
    "median": _median,
    "rms": _rms,
    "min": _min,
    "max": _max,
    # logic
    "any_of": _any_of,
    "all_of": _all_of,
    "count_true": _count_true,
    # arrays / buffers
    "length": _length,
    "sum_of": _sum_of,
    "diff": _diff,
    "last": _last,
    "moving_avg": _moving_avg,
    "derivative": derivative,
}

#: Library functions whose result needs no check (a float, a bool or a count): an
#: expression checks the result of every other function it calls.
SCALAR_FUNCTIONS = frozenset(
    {
        "sqrt",
        "log",
        "exp",
        "floor",
        "ceil",
        "mean",
        "std",
        "variance",
        "rms",
        "any_of",
        "all_of",
        "count_true",
        "length",
        "moving_avg",
    }
)
