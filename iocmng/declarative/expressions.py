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

Cost is bounded by construction, for every value an expression builds, as it
is built (the limits are constants of :mod:`iocmng.declarative.expression_library`):

- an integer has at most ``MAX_POW_BITS`` (4096) bits: ``*`` and ``**`` check the
  operands' sizes *before* computing, ``+`` the result (``%`` cannot grow one);
- a string has at most ``MAX_STRING_CHARS`` (10 000) characters, checked before
  ``+`` concatenates or ``*`` repeats; ``%`` refuses string formatting;
- a list or tuple holds at most ``MAX_ELEMENTS`` (100 000) elements counted
  through nested lists (a long string or integer inside counts one more per
  ``BYTES_PER_ELEMENT`` bytes, a numpy array its ``size``) and nests at most
  ``MAX_NESTING`` (32) levels; one ``*`` repeats at most ``MAX_SEQUENCE_LENGTH``
  (10 000) items. Counting stops as soon as the limit is passed (a list shared
  by reference counts each time it appears), so the count is bounded too;
- checked: the results of ``+ * ** %`` and ``pow()``, list and tuple literals
  (except flat ones of constants), and the result of every function call (the
  plugin's extra functions too; the library functions that return a number,
  :data:`~iocmng.declarative.expression_library.SCALAR_FUNCTIONS`, excepted). ``- / //``
  are left as they are: they build no string or list and add one bit at most;
- nested list repetition (``[[0] * n] * m``: a repeated list literal holding a
  repetition of a list) is refused when the expression is compiled;
- ``round()`` refuses more than 100 digits.

Values coming in (inputs, buffers, parameters) are not checked when read, only
when operated on, by the same rules: ``buf + [x]`` on a buffer past the bounds
is an evaluation error, not a crash. A value over a bound raises
:class:`ExpressionEvaluationError` (``ValueError: ... exceeds the limit ...``),
as does any failure while evaluating (a division by zero, ``sqrt(-1)``, a
missing value). A plugin's evaluation of all its transforms and rules together
has a time budget (:class:`iocmng.declarative.logic.Logic`); the helpers above check it on
their costly paths, and raise :class:`EvaluationBudgetExceeded` past it.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .expression_library import (
    BUILTIN_FUNCTIONS,
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_LENGTH,
    MAX_NODES,
    MAX_STRING_LENGTH,
    SCALAR_FUNCTIONS,
    EvaluationBudgetExceeded,
    ExpressionError,
    ExpressionEvaluationError,
    OverBudget,
    _safe_add,
    _safe_mod,
    _safe_mul,
    _safe_pow,
    check_value,
    derivative,
)

__all__ = [
    "BUILTIN_FUNCTIONS",
    "EvaluationBudgetExceeded",
    "Expression",
    "ExpressionError",
    "ExpressionEvaluationError",
    "compile_expression",
    "derivative",
]

# ---------------------------------------------------------------------------
# Checking and compiling
# ---------------------------------------------------------------------------

# Operators whose cost we bound at run time are rewritten to calls of these
# helpers. Their names (like the "fn:" names of library functions) contain a
# colon, so no expression name and no key of the evaluated mapping can shadow them.
_OP_HELPERS: dict[type[ast.operator], tuple[str, Callable[..., Any]]] = {
    ast.Add: ("op:add", _safe_add),
    ast.Mult: ("op:mul", _safe_mul),
    ast.Mod: ("op:mod", _safe_mod),
    ast.Pow: ("op:pow", _safe_pow),
}
# The value check of list/tuple literals and function results.
_CHECK = "op:value"
# ``- / //`` build no sequence or string, and grow an integer by one bit at most.
_PLAIN_BINOPS = (ast.Sub, ast.Div, ast.FloorDiv)
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

_OP_SYMBOLS = {
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Is: "is",
    ast.IsNot: "is not",
}


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
                raise self.fail(
                    f"the constant {str(v)[:20]}... is too large "
                    f"(integers are limited to {MAX_INT_BITS} bits)"
                )
            return node
        if isinstance(v, float):
            return node
        if isinstance(v, str):
            if len(v) > MAX_STRING_LENGTH:
                raise self.fail(
                    f"a string constant of {len(v)} characters is too long "
                    f"(limit {MAX_STRING_LENGTH})"
                )
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
                raise self.fail(
                    "attribute access ('.') is not allowed; call functions by bare name"
                )
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
        if func.id in SCALAR_FUNCTIONS and self.functions[func.id] is BUILTIN_FUNCTIONS[func.id]:
            return node
        return _checked(node)

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
            except ValueError as exc:
                raise self.fail(str(exc)) from exc
            except TypeError as exc:
                if not isinstance(
                    node.op, ast.Add
                ):  # 'a' + 1 stays an evaluation error, as in Python
                    raise self.fail(str(exc)) from exc
            except ArithmeticError:
                pass  # e.g. 1 % 0: an evaluation error, reported when evaluated
            else:
                return ast.copy_location(ast.Constant(value=folded), node)
        call = ast.Call(
            func=ast.Name(id=helper[0], ctx=ast.Load()), args=[left, right], keywords=[]
        )
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
        return self._literal(node)

    def visit_List(self, node: ast.List) -> ast.AST:
        return self._literal(node)

    def _literal(self, node: ast.List | ast.Tuple) -> ast.AST:
        self._children(node)  # visits the elements in place
        if all(isinstance(e, ast.Constant) for e in node.elts):
            return node  # flat, and no longer than the expression
        return _checked(node)

    # Leaves of the allowed nodes (operators, Load) are passed through unchanged.
    def visit_Load(self, node: ast.AST) -> ast.AST:
        return node

    visit_And = visit_Or = visit_Load
    visit_Add = visit_Sub = visit_Div = visit_FloorDiv = visit_Load
    visit_Not = visit_USub = visit_UAdd = visit_Load
    visit_Eq = visit_NotEq = visit_Lt = visit_LtE = visit_Gt = visit_GtE = visit_Load
    visit_In = visit_NotIn = visit_Load


def _checked(node: ast.expr) -> ast.expr:
    """``node`` wrapped in the value check."""
    return ast.copy_location(
        ast.Call(func=ast.Name(id=_CHECK, ctx=ast.Load()), args=[node], keywords=[]), node
    )


def _refuse_nested_repetition(text: str, tree: ast.AST) -> None:
    """Refuse ``[[0] * n] * m``: a repetition of a list literal holding a repetition of a list.

    Each ``*`` is bounded alone, but together they multiply: refused when the
    expression is compiled, since no such value could pass the bounds anyway.
    ``[0] * n`` and ``[[0]] * n`` stay allowed. One pass, bottom-up.
    """
    # per node: (holds a list/tuple literal, holds a repetition of one, holds a literal holding one)
    memo: dict[int, tuple[bool, bool, bool]] = {}
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, done = stack.pop()
        children = list(ast.iter_child_nodes(node))
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in children)
            continue
        kids = [memo[id(c)] for c in children]
        literal = isinstance(node, ast.List | ast.Tuple)
        has_lit = literal or any(k[0] for k in kids)
        sides = (
            (node.left, node.right)
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
            else ()
        )
        if any(memo[id(side)][2] for side in sides):
            raise ExpressionError(
                text,
                "nested list repetition (a repeated list holding a repeated list, "
                "as [[0] * n] * m) is not allowed: the sizes multiply",
            )
        has_rep = any(memo[id(side)][0] for side in sides) or any(k[1] for k in kids)
        lit_rep = (literal and any(k[1] for k in kids)) or any(k[2] for k in kids)
        memo[id(node)] = (has_lit, has_rep, lit_rep)


class Expression:
    """A checked, compiled expression; evaluate it as often as needed.

    Built by :func:`compile_expression`, never directly. ``text`` is the
    source, ``names`` the variables it reads, ``functions`` the functions it
    calls. :meth:`evaluate` does not parse or check again: the expression was
    compiled once into a function of its names (``lambda a, b: <expression>``),
    which it calls.
    """

    __slots__ = ("text", "names", "functions", "_order", "_function")

    def __init__(
        self,
        text: str,
        names: frozenset[str],
        functions: frozenset[str],
        order: tuple[str, ...],
        function: Callable[..., Any],
    ) -> None:
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
        except OverBudget:
            raise EvaluationBudgetExceeded(
                self.text,
                "the evaluation budget of the plugin's transforms and "
                "rules ran out in this expression",
            ) from None
        except Exception as exc:
            raise ExpressionEvaluationError(self.text, f"{type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def _check_functions(
    text: str, functions: Mapping[str, Any] | None
) -> dict[str, Callable[..., Any]]:
    table = dict(BUILTIN_FUNCTIONS)
    for name, fn in (functions or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ExpressionError(
                text, f"extra function name {name!r} must be an identifier not starting with '_'"
            )
        if not callable(fn):
            raise ExpressionError(text, f"extra function {name!r} is not callable")
        if name in BUILTIN_FUNCTIONS and fn is not BUILTIN_FUNCTIONS[name]:
            raise ExpressionError(
                text, f"extra function {name!r} would replace the library function"
            )
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


def compile_expression(
    text: str, names: Iterable[str], functions: Mapping[str, Callable[..., Any]] | None = None
) -> Expression:
    """Parse, check and compile ``text`` once; raise :class:`ExpressionError` if it is refused.

    ``names`` are the variables the expression may read (a plugin's inputs,
    outputs, parameters, buffers, transform results). A name among them that
    is also a function name is refused: functions are never shadowed.
    ``functions`` are a plugin's extra functions (name -> callable), added to
    :data:`BUILTIN_FUNCTIONS`; they may not replace a library function.
    Use the plugin's same ``names`` and ``functions`` for all its expressions.
    """
    if not isinstance(text, str):
        raise ExpressionError(
            repr(text), f"an expression must be a string, not {type(text).__name__}"
        )
    table = _check_functions(text, functions)
    known = frozenset(names)
    clashes = sorted(known & table.keys())
    if clashes:
        raise ExpressionError(
            text, f"variable {clashes[0]!r} has the name of a function; rename the variable"
        )
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            text[:60] + "...",
            f"expression of {len(text)} characters is too long (limit {MAX_LENGTH})",
        )
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
    _refuse_nested_repetition(text, tree)
    checker = _Checker(text, known, table)
    tree = checker.visit(tree)
    # The checked body becomes ``lambda <names>: body``: names are fast locals
    # (parameters), functions and helpers are globals under names no variable
    # can have, and there are no builtins.
    order = tuple(sorted(checker.used_names))
    params = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=n) for n in order],
        vararg=None,
        kwonlyargs=[],
        kw_defaults=[],
        kwarg=None,
        defaults=[],
    )
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
    globals_[_CHECK] = check_value
    function = eval(code, globals_)  # noqa: S307 - checked, builtins-free code
    return Expression(
        text, frozenset(checker.used_names), frozenset(checker.used_functions), order, function
    )
