"""The plugin-author API of iocmng 2.7.9, as aliases over ours (iocmng.core, pv_client, run_ioc).

The ``TestSafeEval*`` and ``TestRegistry``/``TestMath``/... classes are
2.7.9's own scenarios (its tests/test_safe_eval.py and tests/test_functions.py),
rewritten: same inputs, same expected results, except where a comment says
why ours differs on purpose. Then: ``register()`` and rules.
"""

from __future__ import annotations

import math
import textwrap

import pytest

from iocmng.config import PluginConfig
from iocmng.core import functions
from iocmng.core.functions import get_registry, register
from iocmng.core.safe_eval import safe_eval
from iocmng.logic import Logic


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an empty registry (register() is process-wide, as in 2.7.9)."""
    monkeypatch.setattr(functions, "_registered", {})


# -- 2.7.9's tests/test_safe_eval.py -----------------------------------------------------------
class TestSafeEval:
    def test_simple_comparison(self) -> None:
        assert safe_eval("x == 1", {"x": 1}) is True
        assert safe_eval("x == 1", {"x": 0}) is False

    def test_boolean_and(self) -> None:
        assert safe_eval("a == 0 and b == 1", {"a": 0, "b": 1}) is True
        assert safe_eval("a == 0 and b == 1", {"a": 1, "b": 1}) is False

    def test_boolean_or(self) -> None:
        assert safe_eval("a == 0 or b == 0", {"a": 1, "b": 0}) is True
        assert safe_eval("a == 0 or b == 0", {"a": 1, "b": 1}) is False

    def test_not_operator(self) -> None:
        assert safe_eval("not x", {"x": 0}) is True
        assert safe_eval("not x", {"x": 1}) is False

    def test_greater_less(self) -> None:
        assert safe_eval("x > 5", {"x": 10}) is True
        assert safe_eval("x <= 5", {"x": 5}) is True
        assert safe_eval("x < 5", {"x": 5}) is False

    def test_not_equal(self) -> None:
        assert safe_eval("x != 0", {"x": 1}) is True
        assert safe_eval("x != 0", {"x": 0}) is False

    def test_arithmetic(self) -> None:
        assert safe_eval("a + b > 10", {"a": 6, "b": 7}) is True
        assert safe_eval("a - b == 3", {"a": 8, "b": 5}) is True

    def test_parentheses(self) -> None:
        assert safe_eval("(a == 0 or b == 0) and c == 1", {"a": 1, "b": 0, "c": 1}) is True
        assert safe_eval("(a == 0 or b == 0) and c == 1", {"a": 1, "b": 1, "c": 1}) is False

    def test_ternary(self) -> None:
        assert safe_eval("1 if x > 0 else 0", {"x": 5}) == 1
        assert safe_eval("1 if x > 0 else 0", {"x": -1}) == 0

    def test_interlock_condition(self) -> None:
        readings = {"chlrfd": 0, "llrf1": 1, "chlsld0": 1}
        assert safe_eval("chlrfd == 0 and llrf1 == 1", readings) is True
        readings["chlrfd"] = 1
        assert safe_eval("chlrfd == 0 and llrf1 == 1", readings) is False


class TestSafeEvalSecurity:
    def test_unregistered_function_rejected(self) -> None:
        with pytest.raises(ValueError, match="not registered"):
            safe_eval("print('hello')", {})

    def test_method_call_rejected(self) -> None:
        with pytest.raises(ValueError, match="Unsafe"):
            safe_eval("x.upper()", {"x": "hello"})

    def test_import_rejected(self) -> None:
        with pytest.raises(ValueError, match="Unsafe"):
            safe_eval("__import__('os')", {})

    def test_attribute_access_rejected(self) -> None:
        with pytest.raises(ValueError, match="Unsafe"):
            safe_eval("x.__class__", {"x": 1})

    def test_subscript_rejected(self) -> None:
        with pytest.raises(ValueError, match="Unsafe"):
            safe_eval("x[0]", {"x": [1, 2, 3]})

    def test_lambda_rejected(self) -> None:
        with pytest.raises((ValueError, SyntaxError)):
            safe_eval("(lambda: 1)()", {})

    def test_syntax_error(self) -> None:
        with pytest.raises(SyntaxError):
            safe_eval("if True:", {})

    def test_undefined_variable(self) -> None:
        with pytest.raises(NameError):
            safe_eval("unknown_var == 1", {})


class TestSafeEvalFunctions:
    def test_registered_function_allowed(self) -> None:
        assert safe_eval("abs(x)", {"x": -5}) == 5

    def test_mean_function(self) -> None:
        assert safe_eval("mean(buf)", {"buf": [1, 2, 3, 4, 5]}) == 3.0

    def test_sqrt_in_expression(self) -> None:
        assert safe_eval("sqrt(x) > 3", {"x": 16}) is True

    def test_nested_registered_functions(self) -> None:
        assert safe_eval("round(sqrt(x))", {"x": 2}) == 1

    def test_function_in_condition(self) -> None:
        assert safe_eval("mean(buf) > 0.5", {"buf": [0.1, 0.9, 0.8]}) is True

    def test_clamp_function(self) -> None:
        assert safe_eval("clamp(x, 0, 10)", {"x": 15}) == 10
        assert safe_eval("clamp(x, 0, 10)", {"x": -5}) == 0
        assert safe_eval("clamp(x, 0, 10)", {"x": 5}) == 5

    def test_extra_functions(self) -> None:
        custom = {"double": lambda x: x * 2}
        assert safe_eval("double(x)", {"x": 5}, extra_functions=custom) == 10

    def test_extra_function_unregistered_rejected(self) -> None:
        with pytest.raises(ValueError, match="not registered"):
            safe_eval("triple(x)", {"x": 5})


# -- 2.7.9's tests/test_functions.py -------------------------------------------------------------
class TestRegistry:
    def test_get_registry_returns_dict(self) -> None:
        reg = get_registry()
        assert isinstance(reg, dict)
        assert len(reg) > 0

    def test_custom_register(self) -> None:
        # 2.7.9 registered "_test_double"; our expressions refuse names starting
        # with "_" (the guard against dunders), so register() refuses it at once
        # instead of accepting a function no expression could call.
        with pytest.raises(ValueError, match="not starting with '_'"):
            register("_test_double", lambda x: x * 2)
        register("test_double", lambda x: x * 2)
        assert get_registry()["test_double"](5) == 10

    def test_registry_is_snapshot(self) -> None:
        reg = get_registry()
        reg["__nope__"] = None
        assert "__nope__" not in get_registry()


class TestMath:
    def test_abs(self) -> None:
        assert get_registry()["abs"](-3) == 3

    def test_round(self) -> None:
        assert get_registry()["round"](2.7) == 3

    def test_sqrt(self) -> None:
        assert get_registry()["sqrt"](9) == 3.0

    def test_log(self) -> None:
        assert get_registry()["log"](math.e) == pytest.approx(1.0)

    def test_exp(self) -> None:
        assert get_registry()["exp"](0) == 1.0

    def test_pow(self) -> None:
        assert get_registry()["pow"](2, 10) == 1024

    def test_floor(self) -> None:
        assert get_registry()["floor"](2.9) == 2

    def test_ceil(self) -> None:
        assert get_registry()["ceil"](2.1) == 3

    def test_clamp(self) -> None:
        clamp = get_registry()["clamp"]
        assert clamp(5, 0, 10) == 5
        assert clamp(-5, 0, 10) == 0
        assert clamp(15, 0, 10) == 10


class TestStatistics:
    def test_mean_list(self) -> None:
        assert get_registry()["mean"]([1, 2, 3, 4, 5]) == 3.0

    def test_mean_scalar(self) -> None:
        assert get_registry()["mean"](7) == 7.0

    def test_mean_empty(self) -> None:
        assert get_registry()["mean"]([]) == 0.0

    def test_std(self) -> None:
        assert get_registry()["std"]([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(2.0, abs=0.01)

    def test_std_single(self) -> None:
        assert get_registry()["std"]([5]) == 0.0

    def test_variance(self) -> None:
        assert get_registry()["variance"]([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(4.0, abs=0.01)

    def test_median_odd(self) -> None:
        assert get_registry()["median"]([3, 1, 2]) == 2

    def test_median_even(self) -> None:
        assert get_registry()["median"]([1, 2, 3, 4]) == 2.5

    def test_rms(self) -> None:
        assert get_registry()["rms"]([3, 4]) == pytest.approx(math.sqrt(12.5))

    def test_min_list(self) -> None:
        assert get_registry()["min"]([5, 1, 3]) == 1

    def test_max_list(self) -> None:
        assert get_registry()["max"]([5, 1, 3]) == 5


class TestLogic:
    def test_any_of_true(self) -> None:
        assert get_registry()["any_of"](0, 0, 1) is True

    def test_any_of_false(self) -> None:
        assert get_registry()["any_of"](0, 0, 0) is False

    def test_all_of_true(self) -> None:
        assert get_registry()["all_of"](1, 1, 1) is True

    def test_all_of_false(self) -> None:
        assert get_registry()["all_of"](1, 0, 1) is False

    def test_count_true(self) -> None:
        assert get_registry()["count_true"](1, 0, 1, 1, 0) == 3


class TestArray:
    def test_length(self) -> None:
        assert get_registry()["length"]([1, 2, 3]) == 3

    def test_length_scalar(self) -> None:
        assert get_registry()["length"](5) == 1

    def test_sum_of(self) -> None:
        assert get_registry()["sum_of"]([1, 2, 3]) == 6

    def test_diff(self) -> None:
        assert get_registry()["diff"]([1, 3, 6, 10]) == [2, 3, 4]

    def test_diff_empty(self) -> None:
        assert get_registry()["diff"]([5]) == []

    def test_last(self) -> None:
        assert get_registry()["last"]([1, 2, 3, 4, 5], 3) == [3, 4, 5]

    def test_last_default(self) -> None:
        # 2.7.9: [3], a one-element list, so `last(buf) > 5` compared a list with
        # a number. Ours (iocmng.expressions): the last element itself.
        assert get_registry()["last"]([1, 2, 3]) == 3

    def test_moving_avg(self) -> None:
        assert get_registry()["moving_avg"]([1, 2, 3, 4, 5], 3) == pytest.approx(4.0)

    def test_moving_avg_full(self) -> None:
        assert get_registry()["moving_avg"]([1, 2, 3, 4, 5]) == pytest.approx(3.0)

    def test_derivative(self) -> None:
        assert get_registry()["derivative"]([0, 1, 4, 9]) == [1, 3, 5]


# -- where ours deliberately differs -------------------------------------------------------------
def test_safe_eval_bounds_what_2_7_9_computed_without_limit() -> None:
    # 2.7.9 evaluated pow() unbounded (pow(10, 10**8) stalled the plugin); ours refuses past 4096 bits.
    with pytest.raises(ValueError, match="4096-bit"):
        safe_eval("pow(x, 100000)", {"x": 10})
    assert safe_eval("x ** 2 // 3", {"x": 4}) == 5  # ** and // are ours only (2.7.9 refused them)


def test_safe_eval_errors_keep_their_type_and_name_the_expression() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        safe_eval("a / b", {"a": 1, "b": 0})
    assert "a / b" in " ".join(info.value.__notes__)


def test_safe_eval_ignores_unused_variables_named_like_functions() -> None:
    # A rule context holds every input and parameter; one named "max" must not matter if unread.
    assert safe_eval("x > 1", {"x": 2, "max": 10}) is True
    with pytest.raises(ValueError, match="Unsafe"):  # read, it would hide the function: refused
        safe_eval("x < max", {"x": 2, "max": 10})


def test_register_makes_a_function_callable_from_safe_eval() -> None:
    register("peak_to_peak", lambda v: max(v) - min(v))
    assert safe_eval("peak_to_peak(buf) > 2", {"buf": [1, 4, 2]}) is True
    register("peak_to_peak", lambda v: 0)  # registered again (a reloaded plugin): the new one
    assert safe_eval("peak_to_peak(buf) > 2", {"buf": [1, 4, 2]}) is False


def test_register_refuses_what_no_expression_could_call() -> None:
    with pytest.raises(ValueError, match="library function"):  # 2.7.9 replaced it for everyone
        register("mean", lambda v: 0)
    with pytest.raises(ValueError, match="identifier"):
        register("two words", len)
    with pytest.raises(TypeError, match="not callable"):
        register("nothing", 42)
    with pytest.raises(ValueError, match="library function"):  # nor through extra_functions
        safe_eval("mean(x)", {"x": [1]}, extra_functions={"mean": lambda v: 0})


RULE_CONFIG = textwrap.dedent("""
    parameters: {mode: continuous, interval: 1.0}
    pvs:
      inputs: {SIGNAL: {type: float, value: 0.0, buffer_size: 10}}
      outputs: {ALARM: {type: bool, value: 0}}
    rules:
      - id: NOISY
        condition: "peak_to_peak(SIGNAL_buf) > 2"
        outputs: {ALARM: 1}
""")


def test_registered_functions_are_not_known_to_rules_use_expression_functions() -> None:
    """The documented limit: the runtime compiles rules with the class's expression_functions only."""
    from iocmng.config import parse_config
    from iocmng.errors import ConfigError
    from iocmng.runtime import Runtime

    def peak_to_peak(values: list[float]) -> float:
        return max(values) - min(values)

    register("peak_to_peak", peak_to_peak)
    cfg: PluginConfig = parse_config(RULE_CONFIG)

    class Registered:  # a plugin class without expression_functions
        pass

    with pytest.raises(ConfigError, match="unknown function 'peak_to_peak'"):
        Runtime.compile_logic(Registered, cfg, cfg.parameters)  # type: ignore[arg-type]

    class Declared:
        expression_functions = {"peak_to_peak": peak_to_peak}

    logic = Runtime.compile_logic(Declared, cfg, cfg.parameters)  # type: ignore[arg-type]
    assert isinstance(logic, Logic)
