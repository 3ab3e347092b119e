"""The expression language of declarative plugins: rule conditions and transforms.

An expression is one Python expression, parsed with ``ast.parse(mode="eval")``
and checked against a whitelist before it is compiled, once::

    expr = compile_expression("mean(temp_buf) > limit and not bypass",
                              names={"temp_buf", "limit", "bypass"})
    expr.names                     # frozenset({'temp_buf', 'limit', 'bypass'})
    expr.evaluate({"temp_buf": [20.5, 21.0], "limit": 25, "bypass": 0})   # False

What an expression may contain:

- constants: numbers (ints up to 64 bits), strings (up to
  :data:`MAX_STRING_LENGTH` characters), ``True``, ``False``, ``None``;
- names of the plugin's inputs, outputs, parameters, buffers and transform
  results (the ``names`` given to :func:`compile_expression`; any other name is
  refused when the expression is compiled, not when it runs);
- ``+ - * / // % **``, unary ``- + not``, comparisons (chains too, ``in`` and
  ``not in``), ``and`` / ``or``, ``a if cond else b``, tuple and list literals;
- calls of library functions by bare name, with positional and keyword
  arguments (see :data:`BUILTIN_FUNCTIONS` and the ``functions`` argument).

What is refused, with an :class:`ExpressionError` naming the expression and the
construct: attribute access, subscripts (use ``last(buf)``), dunder names,
lambdas, comprehensions, f-strings, ``*args`` / ``**kwargs``, dicts and sets,
assignment expressions, unknown functions and names, a function used as a value,
a variable named like a function, huge constants, and expressions longer than
:data:`MAX_LENGTH` characters, :data:`MAX_NODES` syntax nodes or
:data:`MAX_DEPTH` levels of nesting.

Cost is bounded at run time too: ``**`` and ``pow()`` refuse an integer result
over :data:`MAX_POW_BITS` bits, ``*`` refuses a repeated string or list over
:data:`MAX_SEQUENCE_LENGTH` items, ``%`` refuses string formatting, and
``round()`` refuses more than 100 digits. A failure while evaluating (a
division by zero, ``sqrt(-1)``, a missing value) raises
:class:`ExpressionEvaluationError`.

The function library is the one of iocmng 2.7.9's ``core/functions.py``, with
these differences, each fixing a trap of the original:

- ``last(buf)`` without ``n`` is the last element (a scalar, so ``last(buf) > 5``
  works); ``last(buf, n)`` is the list of the last ``n`` elements as before.
- ``any_of``, ``all_of`` and ``count_true`` look inside a list or buffer
  argument (``any_of(buf)`` is true when an element is true, not when the
  buffer is non-empty).
- ``derivative`` takes a time base (see :func:`derivative`); without one it is
  the per-sample difference, as before.
- ``min``/``max`` of one scalar return it; every list function accepts numpy
  arrays and deques as lists.
- a plugin's extra functions may not replace a library function.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from iocmng.errors import IocmngError

__all__ = [
    "BUILTIN_FUNCTIONS",
    "Expression",
    "ExpressionError",
    "ExpressionEvaluationError",
    "compile_expression",
    "derivative",
]

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


# ---------------------------------------------------------------------------
# Checking and compiling
# ---------------------------------------------------------------------------

# Operators whose cost we bound at run time are rewritten to calls of these
# helpers. Their names (like the "fn:" names of library functions) contain a
# colon, so no expression name and no key of the evaluated mapping can shadow them.
_OP_HELPERS: dict[type[ast.operator], tuple[str, Callable[..., Any]]] = {
    ast.Mult: ("op:mul", _safe_mul),
    ast.Mod: ("op:mod", _safe_mod),
    ast.Pow: ("op:pow", _safe_pow),
}
_PLAIN_BINOPS = (ast.Add, ast.Sub, ast.Div, ast.FloorDiv)
_UNARYOPS = (ast.Not, ast.USub, ast.UAdd)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)

# Why a construct is refused, by node type (the rest get a generic message).
_REFUSED: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access ('.') is not allowed",
    ast.Subscript: "subscripts ('[...]') are not allowed; use last(buf) or last(buf, n)",
    ast.Lambda: "lambdas are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions (generator expressions) are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.Starred: "starred arguments ('*args') are not allowed",
    ast.NamedExpr: "assignment expressions (':=') are not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Set: "set literals are not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
    ast.Slice: "slices are not allowed",
}

_OP_SYMBOLS = {ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<",
               ast.RShift: ">>", ast.MatMult: "@", ast.Invert: "~", ast.Is: "is",
               ast.IsNot: "is not"}


def _op_refused(op: ast.AST) -> str:
    symbol = _OP_SYMBOLS.get(type(op), type(op).__name__)
    return f"operator {symbol!r} is not allowed"


class _Checker(ast.NodeTransformer):
    """Walks the tree once: refuses what is not whitelisted, rewrites calls and costly operators."""

    def __init__(self, text: str, names: frozenset[str], functions: Mapping[str, Any]) -> None:
        self.text = text
        self.names = names
        self.functions = functions
        self.used_names: set[str] = set()
        self.used_functions: set[str] = set()

    def fail(self, reason: str) -> ExpressionError:
        return ExpressionError(self.text, reason)

    def generic_visit(self, node: ast.AST) -> ast.AST:  # anything not handled below
        reason = _REFUSED.get(type(node))
        if reason is None:
            reason = f"{type(node).__name__} is not allowed"
        raise self.fail(reason)

    def _children(self, node: ast.AST) -> ast.AST:
        return super().generic_visit(node)

    def visit_Expression(self, node: ast.Expression) -> ast.AST:
        return self._children(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        v = node.value
        if isinstance(v, bool) or v is None:
            return node
        if isinstance(v, int):
            if v.bit_length() > MAX_INT_BITS:
                raise self.fail(f"the constant {str(v)[:20]}... is too large "
                                f"(integers are limited to {MAX_INT_BITS} bits)")
            return node
        if isinstance(v, float):
            return node
        if isinstance(v, str):
            if len(v) > MAX_STRING_LENGTH:
                raise self.fail(f"a string constant of {len(v)} characters is too long "
                                f"(limit {MAX_STRING_LENGTH})")
            return node
        raise self.fail(f"{type(v).__name__} constants are not allowed")

    def _check_identifier(self, ident: str, what: str) -> None:
        if ident.startswith("__"):
            raise self.fail(f"dunder {what} {ident!r} is not allowed")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        self._check_identifier(node.id, "name")
        if node.id in self.functions:
            raise self.fail(f"{node.id!r} is a function; call it, as {node.id}(...)")
        if node.id not in self.names:
            raise self.fail(f"unknown name {node.id!r}")
        self.used_names.add(node.id)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                raise self.fail("attribute access ('.') is not allowed; call functions by bare name")
            raise self.fail("only library functions can be called, by bare name")
        self._check_identifier(func.id, "function")
        if func.id not in self.functions:
            if func.id in self.names:
                raise self.fail(f"{func.id!r} is a variable, not a function")
            raise self.fail(f"unknown function {func.id!r}")
        for kw in node.keywords:
            if kw.arg is None:
                raise self.fail("starred arguments ('**kwargs') are not allowed")
            self._check_identifier(kw.arg, "keyword")
        self.used_functions.add(func.id)
        node.args = [self.visit(a) for a in node.args]
        for kw in node.keywords:
            kw.value = self.visit(kw.value)
        node.func = ast.copy_location(ast.Name(id=f"fn:{func.id}", ctx=ast.Load()), func)
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        helper = _OP_HELPERS.get(type(node.op))
        if helper is None and not isinstance(node.op, _PLAIN_BINOPS):
            raise self.fail(_op_refused(node.op))
        left, right = self.visit(node.left), self.visit(node.right)
        if helper is None:
            node.left, node.right = left, right
            return node
        if isinstance(left, ast.Constant) and isinstance(right, ast.Constant):
            # Two constants: folded now (bounded by the helper), so that a huge
            # power or repetition such as 10 ** 10 ** 10 is refused as a 4xx at
            # compile time rather than on every evaluation.
            try:
                folded = helper[1](left.value, right.value)
            except (ValueError, TypeError) as exc:
                raise self.fail(str(exc)) from exc
            except ArithmeticError:
                pass  # e.g. 1 % 0: an evaluation error, reported when evaluated
            else:
                return ast.copy_location(ast.Constant(value=folded), node)
        call = ast.Call(func=ast.Name(id=helper[0], ctx=ast.Load()), args=[left, right], keywords=[])
        return ast.copy_location(call, node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        if not isinstance(node.op, _UNARYOPS):
            raise self.fail(_op_refused(node.op))
        return self._children(node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        for op in node.ops:
            if not isinstance(op, _CMPOPS):
                raise self.fail(_op_refused(op))
        return self._children(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        return self._children(node)

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        return self._children(node)

    def visit_Tuple(self, node: ast.Tuple) -> ast.AST:
        return self._children(node)

    def visit_List(self, node: ast.List) -> ast.AST:
        return self._children(node)

    # Leaves of the allowed nodes (operators, Load) are passed through unchanged.
    def visit_Load(self, node: ast.AST) -> ast.AST:
        return node

    visit_And = visit_Or = visit_Load
    visit_Add = visit_Sub = visit_Div = visit_FloorDiv = visit_Load
    visit_Not = visit_USub = visit_UAdd = visit_Load
    visit_Eq = visit_NotEq = visit_Lt = visit_LtE = visit_Gt = visit_GtE = visit_Load
    visit_In = visit_NotIn = visit_Load


class Expression:
    """A checked, compiled expression; evaluate it as often as needed.

    Built by :func:`compile_expression`, never directly. ``text`` is the
    source, ``names`` the variables it reads, ``functions`` the functions it
    calls. :meth:`evaluate` does not parse or check again: the expression was
    compiled once into a function of its names (``lambda a, b: <expression>``),
    which it calls.
    """

    __slots__ = ("text", "names", "functions", "_order", "_function")

    def __init__(self, text: str, names: frozenset[str], functions: frozenset[str],
                 order: tuple[str, ...], function: Callable[..., Any]) -> None:
        self.text = text
        self.names = names
        self.functions = functions
        self._order = order
        self._function = function

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """The value of the expression with ``values`` (name -> value) for its names.

        ``values`` may hold more names than the expression reads. Raises
        :class:`ExpressionEvaluationError` (naming the expression) if a name it
        reads is missing or the evaluation fails.
        """
        try:
            args = [values[name] for name in self._order]
        except KeyError as exc:
            raise ExpressionEvaluationError(self.text, f"no value for {exc.args[0]!r}") from exc
        try:
            return self._function(*args)
        except Exception as exc:
            raise ExpressionEvaluationError(self.text, f"{type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def _check_functions(text: str, functions: Mapping[str, Any] | None) -> dict[str, Callable[..., Any]]:
    table = dict(BUILTIN_FUNCTIONS)
    for name, fn in (functions or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ExpressionError(text, f"extra function name {name!r} must be an identifier "
                                      "not starting with '_'")
        if not callable(fn):
            raise ExpressionError(text, f"extra function {name!r} is not callable")
        if name in BUILTIN_FUNCTIONS and fn is not BUILTIN_FUNCTIONS[name]:
            raise ExpressionError(text, f"extra function {name!r} would replace the library function")
        table[name] = fn
    return table


def _size(tree: ast.AST) -> tuple[int, int]:
    """Node count and depth of ``tree``, without recursion."""
    count = depth = 0
    stack = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        count += 1
        depth = max(depth, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return count, depth


def compile_expression(text: str, names: Iterable[str],
                       functions: Mapping[str, Callable[..., Any]] | None = None) -> Expression:
    """Parse, check and compile ``text`` once; raise :class:`ExpressionError` if it is refused.

    ``names`` are the variables the expression may read (a plugin's inputs,
    outputs, parameters, buffers, transform results). A name among them that
    is also a function name is refused: functions are never shadowed.
    ``functions`` are a plugin's extra functions (name -> callable), added to
    :data:`BUILTIN_FUNCTIONS`; they may not replace a library function.
    Use the plugin's same ``names`` and ``functions`` for all its expressions.
    """
    if not isinstance(text, str):
        raise ExpressionError(repr(text), f"an expression must be a string, not {type(text).__name__}")
    table = _check_functions(text, functions)
    known = frozenset(names)
    clashes = sorted(known & table.keys())
    if clashes:
        raise ExpressionError(text, f"variable {clashes[0]!r} has the name of a function; "
                                    "rename the variable")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(text[:60] + "...", f"expression of {len(text)} characters is too "
                                                 f"long (limit {MAX_LENGTH})")
    if not text.strip():
        raise ExpressionError(text, "the expression is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(text, f"syntax error: {exc.msg} (column {exc.offset})") from exc
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError(text, f"cannot be parsed: {type(exc).__name__}") from exc
    count, depth = _size(tree)
    if count > MAX_NODES:
        raise ExpressionError(text, f"too complex: {count} syntax nodes (limit {MAX_NODES})")
    if depth > MAX_DEPTH:
        raise ExpressionError(text, f"too deeply nested: depth {depth} (limit {MAX_DEPTH})")
    checker = _Checker(text, known, table)
    tree = checker.visit(tree)
    # The checked body becomes ``lambda <names>: body``: names are fast locals
    # (parameters), functions and helpers are globals under names no variable
    # can have, and there are no builtins.
    order = tuple(sorted(checker.used_names))
    params = ast.arguments(posonlyargs=[], args=[ast.arg(arg=n) for n in order], vararg=None,
                           kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])
    tree = ast.Expression(body=ast.Lambda(args=params, body=tree.body))
    ast.fix_missing_locations(tree)
    try:
        code = compile(tree, f"<expression {text[:40]!r}>", "eval")
    except (RecursionError, MemoryError, ValueError, SyntaxError) as exc:
        raise ExpressionError(text, f"cannot be compiled: {type(exc).__name__}: {exc}") from exc
    globals_: dict[str, Any] = {"__builtins__": {}}
    for fname in checker.used_functions:
        globals_[f"fn:{fname}"] = table[fname]
    for helper_name, helper in _OP_HELPERS.values():
        globals_[helper_name] = helper
    function = eval(code, globals_)  # noqa: S307 - checked, builtins-free code
    return Expression(text, frozenset(checker.used_names), frozenset(checker.used_functions),
                      order, function)

