"""The expression language: the whitelist, the function library, cost bounds, compile-once."""

from __future__ import annotations

import ast
import math
import time
from collections import deque
from unittest import mock

import pytest

from iocmng.declarative import expressions
from iocmng.declarative.expressions import (
    BUILTIN_FUNCTIONS,
    ExpressionError,
    ExpressionEvaluationError,
    compile_expression,
)
from iocmng.errors import IocmngError

NAMES = {"a", "b", "c", "buf", "t_buf", "pairs", "flag", "s"}
VALUES = {
    "a": 2,
    "b": 3,
    "c": 0,
    "buf": [1.0, 2.0, 4.0, 7.0],
    "t_buf": [0.0, 0.5, 1.0, 2.0],
    "pairs": [(0.0, 1.0), (2.0, 5.0), (3.0, 5.0)],
    "flag": True,
    "s": "ON",
}


def ev(text: str, values: dict | None = None, **kw):
    names = NAMES if values is None else NAMES | set(values)
    return compile_expression(text, names, **kw).evaluate(VALUES if values is None else values)


def refused(text: str, match: str, names=NAMES, **kw) -> ExpressionError:
    with pytest.raises(ExpressionError, match=match) as info:
        compile_expression(text, names, **kw)
    assert type(info.value) is ExpressionError  # refused at compile time, not when evaluated
    assert repr(text)[:20] in str(info.value) or text == ""  # the message names the expression
    return info.value


# --- the error ----------------------------------------------------------------


def test_error_is_a_422_iocmng_error_naming_the_expression():
    err = refused("a.b", "attribute")
    assert isinstance(err, IocmngError)
    assert err.status == 422
    assert err.expression == "a.b"
    assert err.problem()["status"] == 422
    assert err.problem()["expression"] == "a.b"
    assert str(err).startswith("expression 'a.b': ")


# --- operators and precedence ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ** 3 ** 2", 512),
        ("-2 ** 2", -4),
        ("7 // 2 + 7 % 2", 4),
        ("7 / 2", 3.5),
        ("a * b - c", 6),
        ("not c and a", 2),
        ("c or b", 3),
        ("a < b < 4", True),
        ("a < b > 4", False),
        ("1 + 1 == 2 and not 2 > 3", True),
        ("not a == 2", False),
        ("a if c else b", 3),
        ("a if flag else b", 2),
        ("s == 'ON' or s == 'OFF'", True),
        ("s in ('ON', 'OFF')", True),
        ("a not in [1, 3]", True),
        ("a + -b", -1),
        ("+a", 2),
        ("True + 1", 2),
        ("None", None),
        ("1e3 > 999", True),
        ("'ab' * 2", "abab"),
        ("[1] * 3", [1, 1, 1]),
        ("7 % 3", 1),
    ],
)
def test_operators_and_precedence(text, expected):
    assert ev(text) == expected


# --- the function library ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("sqrt(16)", 4.0),
        ("log(math_e)", 1.0),
        ("log(8, 2)", 3.0),
        ("exp(0)", 1.0),
        ("pow(2, 10)", 1024),
        ("pow(3, 4, 5)", 1),
        ("floor(2.7)", 2),
        ("ceil(2.1)", 3),
        ("clamp(5, 0, 3)", 3),
        ("clamp(-1, 0, 3)", 0),
        ("clamp(2, 0, 3)", 2),
        ("mean(buf)", 3.5),
        ("mean([])", 0.0),
        ("mean(4)", 4.0),
        ("variance(buf)", 5.25),
        ("variance([1])", 0.0),
        ("std(buf)", math.sqrt(5.25)),
        ("std([5])", 0.0),
        ("median(buf)", 3.0),
        ("median([3, 1, 2])", 2),
        ("median([])", 0.0),
        ("rms([3, 4])", math.sqrt(12.5)),
        ("rms([])", 0.0),
        ("min(buf)", 1.0),
        ("min(a, b, 1)", 1),
        ("min(a)", 2),
        ("max(buf)", 7.0),
        ("max(a, b)", 3),
        ("max([], default=-1)", -1),
        ("any_of(c, a)", True),
        ("any_of(c, 0)", False),
        ("any_of([0, 0])", False),
        ("any_of([0, 1])", True),
        ("all_of(a, b, flag)", True),
        ("all_of(a, c)", False),
        ("all_of([1, 0])", False),
        ("count_true(a, c, b, flag)", 3),
        ("count_true([1, 0, 1])", 2),
        ("length(buf)", 4),
        ("length(a)", 1),
        ("sum_of(buf)", 14.0),
        ("diff(buf)", [1.0, 2.0, 3.0]),
        ("diff([1])", []),
        ("last(buf)", 7.0),
        ("last(buf, 2)", [4.0, 7.0]),
        ("last(buf, n=1)", [7.0]),
        ("last(buf, 0)", []),
        ("mean(last(buf, 2))", 5.5),
        ("moving_avg(buf)", 3.5),
        ("moving_avg(buf, 2)", 5.5),
        ("moving_avg([])", 0.0),
        ("derivative(buf)", [1.0, 2.0, 3.0]),
        ("derivative(buf, 0.5)", [2.0, 4.0, 6.0]),
        ("derivative(buf, t_buf)", [2.0, 4.0, 3.0]),
        ("derivative(pairs)", [2.0, 0.0]),
        ("last(derivative(buf, t_buf)) > 2", True),
    ],
)
def test_function_library(text, expected):
    values = dict(VALUES, math_e=math.e)
    result = compile_expression(text, NAMES | {"math_e"}).evaluate(values)
    if isinstance(expected, float):
        assert result == pytest.approx(expected)
    else:
        assert result == expected


def test_every_library_function_is_tested_and_matches_the_reference_set():
    reference = set(
        "abs round sqrt log exp pow floor ceil clamp mean std variance median rms min max "
        "any_of all_of count_true length sum_of diff last moving_avg derivative".split()
    )
    assert set(BUILTIN_FUNCTIONS) == reference
    params = next(m for m in test_function_library.pytestmark if m.name == "parametrize").args[1]
    called = {
        n.func.id
        for text, _ in params
        for n in ast.walk(ast.parse(text, mode="eval"))
        if isinstance(n, ast.Call)
    }
    assert reference <= called


def test_buffers_may_be_deques_tuples_or_arrays():
    expr = compile_expression("mean(buf) + length(buf) + last(buf)", {"buf"})
    assert expr.evaluate({"buf": deque([1.0, 3.0], maxlen=5)}) == 2.0 + 2 + 3.0
    assert expr.evaluate({"buf": (1.0, 3.0)}) == 7.0
    np = pytest.importorskip("numpy")
    assert expr.evaluate({"buf": np.array([1.0, 3.0])}) == 7.0


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("last([])", "empty buffer"),
        ("last(buf, -1)", "n must be >= 0"),
        ("moving_avg(buf, 0)", "window must be >= 1"),
        ("derivative(buf, 0)", "time step must be > 0"),
        ("derivative(buf, [0, 1])", "4 values but 2 timestamps"),
        ("derivative([1, 2], [1, 1])", "timestamps do not increase"),
        ("sqrt(-1)", "ValueError"),
        ("log(0)", "ValueError"),
        ("a / c", "ZeroDivisionError"),
        ("exp(100000)", "OverflowError"),
        ("s < 1", "TypeError"),
        ("round(a, 1000)", "ndigits 1000 exceeds"),
        ("s % a", "string formatting"),
    ],
)
def test_evaluation_errors_name_the_expression(text, match):
    expr = compile_expression(text, NAMES)
    with pytest.raises(ExpressionEvaluationError, match=match) as info:
        expr.evaluate(VALUES)
    assert info.value.expression == text
    assert info.value.__cause__ is not None
    assert isinstance(info.value, ExpressionError)


def test_missing_value_is_an_evaluation_error():
    expr = compile_expression("a + b", NAMES)
    with pytest.raises(ExpressionEvaluationError, match="no value for 'b'"):
        expr.evaluate({"a": 1})


# --- refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a.real", "attribute access"),
        ("s.upper()", "attribute access"),
        ("().__class__", "attribute access"),
        ("__import__('os')", "dunder function '__import__'"),
        ("__builtins__", "dunder name '__builtins__'"),
        ("max(buf, __x=1)", "dunder keyword"),
        ("lambda: 1", "lambdas are not allowed"),
        ("[x for x in buf]", "comprehensions"),
        ("{x for x in buf}", "comprehensions"),
        ("{x: 1 for x in buf}", "comprehensions"),
        ("sum_of(x for x in buf)", "comprehensions"),
        ("f'{a}'", "f-strings"),
        ("max(*buf)", "starred arguments"),
        ("max(**a)", r"starred arguments \('\*\*kwargs'\)"),
        ("open('x')", "unknown function 'open'"),
        ("eval('1')", "unknown function 'eval'"),
        ("nope", "unknown name 'nope'"),
        ("a + nope", "unknown name 'nope'"),
        ("a(1)", "'a' is a variable, not a function"),
        ("mean", "'mean' is a function; call it"),
        ("max(buf, key=abs)", "'abs' is a function"),
        ("buf[0]", "subscripts"),
        ("(a := 1)", "assignment expressions"),
        ("{1: 2}", "dict literals"),
        ("{1, 2}", "set literals"),
        ("a & b", "operator '&'"),
        ("a << 1000", "operator '<<'"),
        ("~a", "operator '~'"),
        ("a is None", "operator 'is'"),
        ("1j", "complex constants"),
        ("b'x'", "bytes constants"),
        ("...", "ellipsis constants"),
        ("(lambda: 1)()", "only library functions can be called"),
        ("a +", "syntax error"),
        ("a = 1", "syntax error"),
        ("import os", "syntax error"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_refused_at_compile_time(text, match):
    refused(text, match)


def test_a_variable_named_like_a_function_is_refused():
    refused("a > 1", "variable 'max' has the name of a function", names={"a", "max"})
    refused(
        "a > 1",
        "variable 'scale' has the name of a function",
        names={"a", "scale"},
        functions={"scale": lambda x: x},
    )


def test_a_value_named_like_a_function_cannot_shadow_it():
    # Even a mapping key named like a function is never looked up for a call.
    expr = compile_expression("mean(buf)", {"buf"})
    assert expr.evaluate({"buf": [1, 3], "mean": lambda v: 99, "fn:mean": lambda v: 99}) == 2.0


# --- cost bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1" + "0" * 30, "too large"),
        ("-" + "9" * 25, "too large"),
        ("2 ** 100000", "exceeds the 4096-bit limit"),
        ("10 ** 10 ** 10", "exceeds the 4096-bit limit"),
        ("pow(2, 5000) if 1 else 2 ** 99999", "exceeds the 4096-bit limit"),
        ("'a' * 10 ** 6", "exceeds 10000 items"),
        ("'%0999999999d' % 1", "string formatting"),
        ("'" + "x" * 1001 + "'", "too long"),
        ("a" + " + a" * 300, "too complex"),
        ("a" * 5000, "too long"),
        ("-" * 150 + "a", "too deeply nested"),
        ("not " * 150 + "a", "too deeply nested"),
        ("(" * 300 + "a" + ")" * 300, "syntax error|cannot be parsed|too complex"),
    ],
)
def test_cost_bounds_at_compile_time(text, match):
    refused(text, match, names=NAMES | {"a" * 5000})


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("a ** b", {"a": 2, "b": 100000}),
        ("pow(a, b)", {"a": 10, "b": 10**6}),
        ("s * b", {"s": "x", "b": 10**7}),
        ("buf * b", {"buf": [1, 2], "b": 10**7}),
        ("b * s", {"s": "x", "b": 10**7}),
        ("[0] * b", {"b": 100000}),
    ],
)
def test_cost_bounds_at_run_time(text, values):
    expr = compile_expression(text, NAMES)
    with pytest.raises(ExpressionEvaluationError, match="exceeds"):
        expr.evaluate(values)


def test_bounded_operations_still_work_within_the_limits():
    assert ev("a ** 64") == 2**64
    assert ev("2.0 ** 0.5") == pytest.approx(math.sqrt(2))
    assert ev("a ** -1") == 0.5
    assert ev("1 ** 10000000") == 1
    assert ev("s * 3") == "ONONON"
    assert ev("a * 2.5") == 5.0
    assert ev("pow(3, 10 ** 9, 7)") == pow(3, 10**9, 7)


# --- extra functions -------------------------------------------------------------


def test_extra_functions_per_plugin():
    extra = {"scale": lambda x, k=2: x * k}
    expr = compile_expression("scale(a) + scale(a, k=3)", NAMES, functions=extra)
    assert expr.evaluate(VALUES) == 10
    assert expr.functions == frozenset({"scale"})
    # Another plugin's expressions do not see them: nothing is registered globally.
    refused("scale(a)", "unknown function 'scale'")


@pytest.mark.parametrize(
    ("functions", "match"),
    [
        ({"mean": lambda v: 0}, "would replace the library function"),
        ({"_hidden": abs}, "must be an identifier"),
        ({"not valid": abs}, "must be an identifier"),
        ({"f": 3}, "not callable"),
    ],
)
def test_bad_extra_functions_are_refused(functions, match):
    with pytest.raises(ExpressionError, match=match):
        compile_expression("a", NAMES, functions=functions)


# --- compile once -----------------------------------------------------------------


def test_names_and_functions_used():
    expr = compile_expression("mean(buf) > a and max(a, b) < 9", NAMES)
    assert expr.names == frozenset({"buf", "a", "b"})
    assert expr.functions == frozenset({"mean", "max"})
    assert expr.text == "mean(buf) > a and max(a, b) < 9"
    assert "mean(buf)" in repr(expr)


def test_evaluation_does_not_parse_or_compile_again():
    expr = compile_expression("mean(buf) * a + b ** 2 > c", NAMES)
    with (
        mock.patch.object(expressions.ast, "parse", side_effect=AssertionError("re-parsed")),
        mock.patch("builtins.compile", side_effect=AssertionError("re-compiled")),
        mock.patch.object(expressions._Checker, "visit", side_effect=AssertionError("re-checked")),
    ):
        for i in range(100):
            assert expr.evaluate(dict(VALUES, c=i)) is (3.5 * 2 + 9 > i)


def test_the_compiled_function_is_cached():
    expr = compile_expression("a + b", NAMES)
    function = expr._function
    expr.evaluate(VALUES)
    expr.evaluate(VALUES)
    assert expr._function is function
    assert function.__code__.co_filename.startswith("<expression")
    assert function.__code__.co_varnames == ("a", "b")


def test_constants_are_folded_within_the_bounds():
    expr = compile_expression("10 ** 3 * a", NAMES)
    assert 1000 in expr._function.__code__.co_consts
    assert expr.evaluate(VALUES) == 2000


def test_evaluation_has_no_builtins():
    expr = compile_expression("a", {"a"})
    assert expr._function.__globals__["__builtins__"] == {}


# --- value bounds (issue 14, item 3): every value an expression builds is checked as it is built ---


def failed(text: str, values: dict, match: str, names=None, **kw) -> ExpressionEvaluationError:
    expr = compile_expression(text, set(values) if names is None else names, **kw)
    with pytest.raises(ExpressionEvaluationError, match=match) as info:
        expr.evaluate(values)
    assert info.value.expression == text
    return info.value


BIG = 1 << 3000  # 3001 bits: under the 4096-bit limit alone


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("x * x", {"x": BIG}),  # 6002 bits: refused before multiplying
        ("x * y", {"x": 1 << 10_000_000, "y": 1 << 10_000_000}),  # would take seconds to multiply
        ("x ** 2", {"x": BIG}),
        ("pow(x, 2)", {"x": BIG}),
        ("x + x", {"x": (1 << 4096) - 1}),  # 4097 bits
        ("x + 1", {"x": 1 << 5000}),  # an input past the bound, operated on
    ],
)
def test_integers_are_bounded_in_bits(text, values):
    failed(text, values, "4096-bit limit")


def test_a_squaring_chain_stops_at_the_bit_limit():
    square = compile_expression("x * x", {"x"})
    x, steps = 3, 0
    with pytest.raises(ExpressionEvaluationError, match="4096-bit limit"):
        while True:
            x = square.evaluate({"x": x})
            steps += 1
    assert 10 <= steps <= 12 and x.bit_length() <= 4096


@pytest.mark.parametrize(
    ("text", "values", "match"),
    [
        ("s + s", {"s": "x" * 6000}, "12000 characters exceeds the limit of 10000"),
        ("s + 'y'", {"s": "x" * 10_000}, "10001 characters"),
        ("s * 3", {"s": "x" * 4000}, "exceeds 10000 items"),
        ("s + s", {"s": "x" * 10**7}, "characters exceeds"),  # a huge input: refused, no crash
    ],
)
def test_strings_are_bounded(text, values, match):
    failed(text, values, match)


def test_a_doubling_string_chain_stops_at_the_limit():
    double = compile_expression("s + s", {"s"})
    s = "ab"
    with pytest.raises(ExpressionEvaluationError, match="limit of 10000"):
        while True:
            s = double.evaluate({"s": s})
    assert len(s) <= 10_000


L10K = [0.5] * 10_000


@pytest.mark.parametrize(
    ("text", "values", "match"),
    [
        ("l + l", {"l": [0] * 60_000}, "limit of 100000 elements"),
        ("l * 2", {"l": [0] * 6000}, "exceeds 10000 items"),
        ("[l] * 20", {"l": L10K}, "limit of 100000 elements"),  # 20 x 10 001: counted through
        (
            "[l, l, l, l, l, l, l, l, l, l, l]",
            {"l": L10K},
            "limit of 100000 elements",
        ),  # shared refs count
        ("(l,) + (l,) * 10", {"l": L10K}, "limit of 100000 elements"),
        (
            "buf + [1]",
            {"buf": [0.0] * 10**6},
            "limit of 100000 elements",
        ),  # a huge input, operated on
        ("[buf]", {"buf": [0.0] * 10**6}, "limit of 100000 elements"),
        # a long string inside weighs one element per 100 characters: 1000 x (1 + 100)
        ("[s] * 1000", {"s": "x" * 10_000}, "limit of 100000 elements"),
        (
            "[x] * 10000 + [x] * 10000",
            {"x": 1 << 4000},
            "limit of 100000 elements",
        ),  # 4000 bits: 1 + 5 each
    ],
)
def test_lists_are_bounded_in_elements(text, values, match):
    failed(text, values, match)


def nested(depth: int) -> list:
    value: list = [0]
    for _ in range(depth - 1):
        value = [value]
    return value


def test_lists_are_bounded_in_nesting():
    assert len(ev("[[[[[[[[[[a]]]]]]]]]]")) == 1  # 10 levels
    text = "[" * 33 + "a" + "]" * 33
    failed(text, {"a": 1}, "nested more than 32 levels", names=NAMES)
    assert ev("[x]", {"x": nested(31)}) == [nested(31)]
    failed("[x]", {"x": nested(32)}, "nested more than 32 levels")
    failed("x + x", {"x": nested(40)}, "nested more than 32 levels")


def test_counting_a_value_is_bounded():
    # 10**6 references to a list of 10**6: 10**12 elements if walked, refused after ~10**5
    inner = [0.0] * 10**6
    failed("x + x", {"x": [inner] * 10**6}, "limit of 100000 elements")
    loop: list = []
    loop.append(loop)  # a cycle (a plugin function could return one): refused, not walked forever
    failed("f()", {}, "nested more than 32 levels", names=set(), functions={"f": lambda: loop})


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ("x" * 20_000, "20000 characters"),
        (1 << 5000, "4096-bit limit"),
        ([0] * 200_000, "limit of 100000 elements"),
        ([[0] * 1000] * 1000, "limit of 100000 elements"),
        (nested(40), "nested more than 32 levels"),
    ],
)
def test_function_results_are_bounded(result, match):
    failed("f(a)", {"a": 1}, match, functions={"f": lambda _: result})


def test_library_function_results_are_bounded():
    huge = list(range(200_000))
    failed("diff(buf)", {"buf": huge}, "limit of 100000 elements")
    failed("last(buf, 150000)", {"buf": huge}, "limit of 100000 elements")
    # functions returning a number need no check, and read a huge input as it is
    assert (
        compile_expression("length(buf) + mean(buf)", {"buf"}).evaluate({"buf": huge})
        == 200_000 + 99_999.5
    )


def test_numpy_results_and_broadcasts_are_bounded():
    np = pytest.importorskip("numpy")
    failed(
        "f()",
        {},
        "limit of 100000 elements",
        names=set(),
        functions={"f": lambda: np.zeros(200_000)},
    )
    # (1000,) + (1000, 1): a 10**6 broadcast, refused before numpy builds it
    failed(
        "f() + [[0]] * 1000",
        {},
        "shape \\(1000, 1000\\)",
        names=set(),
        functions={"f": lambda: np.zeros(1000)},
    )
    assert ev("f() * 2 + 1", {}, functions={"f": lambda: np.ones(3)}).tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "text",
    [
        "[[[0]*10000]*10000]*10000 == [[[0]*10000]*10000]*10000",
        "[[0] * 10] * 10",
        "3 * [[0] * 10]",
        "((0,) * 10,) * 10",
        "[[a] * b] * c",
        "([[0] * 10] + [1]) * 3",
        "[0, [1, [a * [2]]]] * 2",
    ],
)
def test_nested_list_repetition_is_refused_at_compile_time(text):
    refused(text, "nested list repetition")


def test_list_literals_and_repetition_still_work():
    assert ev("[0] * 10") == [0] * 10
    assert ev("[[0]] * 3") == [[0], [0], [0]]
    assert ev("[[0] * 3, [1] * 2]") == [[0, 0, 0], [1, 1]]
    assert ev("[a * 2] * 3") == [4, 4, 4]
    assert ev("([0] * 10) * 10") == [0] * 100
    assert ev("[a, b] + [c]") == [2, 3, 0]
    assert ev("(a, b)") == (2, 3)
    assert ev("b in (a, b)") is True
    assert ev("buf + [a]") == [1.0, 2.0, 4.0, 7.0, 2]
    assert ev("s + 'X'") == "ONX"
    assert ev("a + 0.5") == 2.5
    assert ev("[0] * 0") == [] and ev("[] * 10**9") == []
    assert ev("x * x", {"x": (1 << 2048) - 1}).bit_length() == 4096  # the limit itself passes
    assert ev("'x' * 10000") == "x" * 10_000
    assert len(ev("x + x", {"x": [0] * 50_000})) == 100_000
    assert len(ev("[s] * 1000", {"s": "x" * 9000})) == 1000  # 1000 x (1 + 90)
    assert len(ev("[x] * 10000 + [0] * 10000", {"x": 1 << 4000})) == 20_000


def test_add_of_constants_is_folded_within_the_bounds():
    assert "ab" in compile_expression("'a' + 'b' == s", NAMES)._function.__code__.co_consts
    refused("'x' * 6000 + 'y' * 6000", "12000 characters")
    # 'a' + 1 stays an evaluation error (a TypeError), as it was
    with pytest.raises(ExpressionEvaluationError, match="TypeError"):
        ev("'a' + 1")


# --- the evaluation budget: the helpers check it on their costly paths ---


def test_budget_past_raises_naming_the_expression():
    from iocmng.declarative.expression_library import reset_deadline, set_deadline

    expr = compile_expression("buf + [a]", NAMES)
    token = set_deadline(time.perf_counter() - 1)
    try:
        with pytest.raises(expressions.EvaluationBudgetExceeded, match="budget") as info:
            expr.evaluate(VALUES)
        # cheap operations on numbers do not look at the clock
        assert compile_expression("a + b * 2", NAMES).evaluate(VALUES) == 8
    finally:
        reset_deadline(token)
    assert info.value.expression == "buf + [a]"
    assert isinstance(info.value, ExpressionEvaluationError) and info.value.status == 422
    assert expr.evaluate(VALUES)[-1] == 2  # no deadline outside an evaluation budget
