"""The expression language's limits, errors and function library.

Split from :mod:`iocmng.expressions` (which parses, checks and compiles
expressions); see that module's docstring for the language itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import IocmngError

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
#: Largest integer result of ``**`` / ``pow()``, in bits.
MAX_POW_BITS = 4096
#: Longest string or list built by ``*`` repetition.
MAX_SEQUENCE_LENGTH = 10_000
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


def _safe_pow(base: Any, exp: Any, mod: Any = None) -> Any:
    """``pow`` refusing integer results over :data:`MAX_POW_BITS` bits."""
    if mod is None and isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if base.bit_length() * exp > MAX_POW_BITS:
            raise ValueError(f"{base} ** {exp} exceeds the {MAX_POW_BITS}-bit limit")
    return pow(base, exp) if mod is None else pow(base, exp, mod)


def _safe_mul(a: Any, b: Any) -> Any:
    """``a * b`` refusing a repeated string/list/tuple over :data:`MAX_SEQUENCE_LENGTH` items."""
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(n, int):
            if len(seq) * n > MAX_SEQUENCE_LENGTH:
                raise ValueError(f"repetition of {len(seq)} items {n} times exceeds "
                                 f"{MAX_SEQUENCE_LENGTH} items")
    return a * b


def _safe_mod(a: Any, b: Any) -> Any:
    """``a % b`` for numbers only (``str % args`` formatting can build huge strings)."""
    if isinstance(a, str | bytes):
        raise TypeError("string formatting with % is not supported")
    return a % b


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
            raise ValueError(f"derivative(): timestamps do not increase ({times[i - 1]} then {times[i]})")
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
