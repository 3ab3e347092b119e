"""The plugin-author API of iocmng 2.7.9, as aliases over ours (iocmng.core, pv_client, run_ioc).

The ``TestSafeEval*`` and ``TestRegistry``/``TestMath``/... classes are
2.7.9's own scenarios (its tests/test_safe_eval.py and tests/test_functions.py),
rewritten: same inputs, same expected results, except where a comment says
why ours differs on purpose. Then: ``register()`` and rules, the pv_client
facade against a real soft IOC (CA and PVA on loopback ports), and
``run_ioc()`` in a subprocess.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EpicsPorts, random_prefix, wait_for_sync

from iocmng.config.models import PluginConfig
from iocmng.core import functions, pv_client
from iocmng.core.functions import get_registry, register
from iocmng.core.safe_eval import safe_eval
from iocmng.declarative.logic import Logic

# the soft IOC helper of the system tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "system"))
from external_ioc import ExternalIoc, merge_link_env  # noqa: E402


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
    from iocmng.config.models import parse_config
    from iocmng.errors import ConfigError
    from iocmng.runtime.runtime import Runtime

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


# -- the top-level names ---------------------------------------------------------------------------
def test_top_level_names_of_2_7_9() -> None:
    import iocmng
    from iocmng import pv_client as top_pv_client
    from iocmng import run_ioc
    from iocmng.core.runner import run_ioc as core_run_ioc

    assert top_pv_client is pv_client and iocmng.pv_client is pv_client
    assert run_ioc is core_run_ioc
    for fn in (
        "get",
        "put",
        "monitor",
        "unmonitor",
        "unmonitor_all",
        "active_monitors",
        "get_provider",
        "init",
        "close",
    ):
        assert callable(getattr(pv_client, fn)), fn


def test_import_iocmng_stays_light() -> None:
    """``import iocmng`` (plugins do it) must not start EPICS clients or import the server."""
    code = (
        "import sys, iocmng; heavy = [m for m in ('aioca', 'p4p', 'softioc', 'pydantic', 'iocmng.cli')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_run_ioc_refuses_what_is_not_a_plugin_class() -> None:
    from iocmng import run_ioc

    with pytest.raises(TypeError, match="TaskBase or JobBase"):
        run_ioc(dict)
    with pytest.raises(ValueError, match="prefix"):
        run_ioc(type("T", (__import__("iocmng").TaskBase,), {}), prefix="bad prefix")


from iocmng.epics import blocking_client  # noqa: E402


# -- pv_client without a server ------------------------------------------------------------------------
@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The pv_client module, closed (threads stopped) and its protocol choice forgotten after the test."""
    monkeypatch.setattr(blocking_client, "_provider", None)  # the state behind the alias
    try:
        yield pv_client
    finally:
        pv_client.close()


def test_provider_defaults_to_the_service_setting(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IOCMNG_LINK_PROTOCOL", raising=False)
    monkeypatch.delenv("IOCMNG_PVA", raising=False)
    assert client.get_provider() == "ca"
    monkeypatch.setattr(blocking_client, "_provider", None)  # the state behind the alias
    monkeypatch.setenv("IOCMNG_PVA", "true")  # 2.7.9's switch
    assert client.get_provider() == "pva"
    client.init(pva=False)
    assert client.get_provider() == "ca"
    client.init()
    assert client.get_provider() == "pva"


def test_monitor_bookkeeping(client: Any) -> None:
    name = f"{random_prefix()}:NOBODY"
    assert client.monitor(name, print, name="mine") == "mine"
    assert client.monitor(name, print) == name
    assert client.monitor(name, print, name="mine") == "mine"  # replaces
    assert client.active_monitors() == {"mine": name, name: name}
    assert client.unmonitor("mine") is True
    assert client.unmonitor("mine") is False
    assert client.unmonitor_all() == 1
    assert client.active_monitors() == {}


@pytest.mark.parametrize("pva", [False, True])
def test_no_server_is_a_timeout_error(client: Any, pva: bool) -> None:
    from iocmng.errors import PVNotFound

    client.init(pva=pva)
    with pytest.raises(TimeoutError) as info:
        client.get(f"{random_prefix()}:NOBODY", timeout=0.3)
    # the client's own timeout ended it (the engine's GRACE fallback raises without a cause)
    assert isinstance(info.value.__cause__, PVNotFound)


async def test_blocking_calls_refused_on_an_event_loop(client: Any) -> None:
    with pytest.raises(RuntimeError, match=r"get_async"):
        client.get("ANY:PV")
    with pytest.raises(RuntimeError, match=r"put_async"):
        client.put("ANY:PV", 1)
    client.init(pva=False)
    with pytest.raises(TimeoutError):  # the async form works on the loop
        await client.get_async(f"{random_prefix()}:NOBODY", timeout=0.2)


# -- pv_client against a real soft IOC (loopback) ------------------------------------------------------
@pytest.fixture(scope="module")
def soft_ioc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExternalIoc, str]]:
    """One soft IOC for the module; this process's PVA clients are pointed at it while it runs."""
    p = random_prefix()
    ioc = ExternalIoc(
        tmp_path_factory.mktemp("ioc"),
        {
            f"{p}:AO": ("ao", 1.5),
            f"{p}:TXT": ("stringout", "hi"),
            f"{p}:VALVE": ("bo", 0, {"ZNAM": "CLOSED", "ONAM": "OPEN"}),
        },
    )
    with pytest.MonkeyPatch.context() as mp, ioc:
        # The CA client already searches the IOC's port (conftest's pool); p4p reads its
        # address list when pv_client creates its context, after this.
        import os

        mp.setenv("EPICS_PVA_ADDR_LIST", merge_link_env(os.environ, ioc)["EPICS_PVA_ADDR_LIST"])
        try:
            yield ioc, p
        finally:
            pv_client.close()  # before the IOC goes (its channels would call into a closed loop)


@pytest.mark.parametrize("pva", [False, True], ids=["ca", "pva"])
def test_get_put_round_trip(soft_ioc: tuple[ExternalIoc, str], client: Any, pva: bool) -> None:
    _, p = soft_ioc
    client.init(pva=pva)
    client.put(f"{p}:AO", 2.25)
    assert client.get(f"{p}:AO") == 2.25
    client.put(f"{p}:TXT", "bye")
    assert client.get(f"{p}:TXT") == "bye"
    client.put(f"{p}:VALVE", "OPEN")  # a choice, or its index
    assert client.get(f"{p}:VALVE") == 1
    client.put(f"{p}:VALVE", 0)
    assert client.get(f"{p}:VALVE") == 0
    with pytest.raises(ValueError, match="finite"):
        client.put(f"{p}:AO", math.nan)
    with pytest.raises(ValueError, match="not a number"):
        client.put(f"{p}:AO", "high")


@pytest.mark.parametrize("pva", [False, True], ids=["ca", "pva"])
def test_monitor_calls_back_in_its_thread(
    soft_ioc: tuple[ExternalIoc, str], client: Any, pva: bool
) -> None:
    _, p = soft_ioc
    client.init(pva=pva)
    client.put(f"{p}:AO", 10.0)
    seen: list[Any] = []
    events: list[Any] = []
    threads: set[str] = set()

    def on_value(value: Any) -> None:
        threads.add(threading.current_thread().name)
        seen.append(value)
        if value == 11.0:  # a callback may use the blocking API
            seen.append(client.get(f"{p}:TXT"))

    key = client.monitor(f"{p}:AO", on_value, conn_callback=events.append)
    wait_for_sync(lambda: 10.0 in seen, timeout=10, what="the first value")
    client.put(f"{p}:TXT", "from-callback")
    client.put(f"{p}:AO", 11.0)
    wait_for_sync(
        lambda: "from-callback" in seen, timeout=10, what="the update and the get in the callback"
    )
    assert events[0] is True
    assert all(t.startswith("iocmng-pv-callbacks") for t in threads)
    assert client.unmonitor(key) is True
    count = len(seen)
    client.put(f"{p}:AO", 12.0)
    time.sleep(0.3)
    assert len(seen) == count


def test_conn_callback_on_connect_and_loss(tmp_path: Path, client: Any) -> None:
    p = random_prefix()
    ioc = ExternalIoc(tmp_path, {f"{p}:AO": ("ao", 3.0)})
    events: dict[str, list[bool]] = {"ca": [], "pva": []}
    with pytest.MonkeyPatch.context() as mp, ioc:
        import os

        mp.setenv("EPICS_PVA_ADDR_LIST", merge_link_env(os.environ, ioc)["EPICS_PVA_ADDR_LIST"])
        for provider in ("ca", "pva"):  # a monitor keeps the protocol chosen when it started
            client.init(pva=provider == "pva")
            client.monitor(
                f"{p}:AO", lambda v: None, name=provider, conn_callback=events[provider].append
            )
        wait_for_sync(
            lambda: events["ca"] == [True] and events["pva"] == [True], timeout=10, what="connects"
        )
        ioc.stop()
        wait_for_sync(
            lambda: events["ca"] == [True, False] and events["pva"] == [True, False],
            timeout=20,
            what="disconnects",
        )
        client.close()  # before leaving the IOC's `with` (which purges every CA channel of this process)


async def test_async_forms_on_the_loop(soft_ioc: tuple[ExternalIoc, str], client: Any) -> None:
    _, p = soft_ioc
    client.init(pva=False)
    await client.put_async(f"{p}:AO", 7.5)
    assert await client.get_async(f"{p}:AO") == 7.5


# -- run_ioc: a 2.7.9 script, unchanged --------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import sys

    from iocmng import TaskBase, pv_client, run_ioc


    class Counter(TaskBase):
        def initialize(self):
            self.n = 0

        def execute(self):
            self.n += 1
            self.set_pv("COUNT", self.n)
            if self.n == 3:  # pv_client from a sync method (a worker thread), over CA (pva=False)
                self.set_pv("ECHO", pv_client.get(sys.argv[1] + ":COUNT"))
            self.set_pv("VIA_CA", not self.parameters["pva"])

        def cleanup(self):
            print("cleanup ran", flush=True)


    if __name__ == "__main__":
        run_ioc(Counter, prefix=sys.argv[1], pva=False, pvout=sys.argv[2], config={
            "parameters": {"mode": "continuous", "interval": 0.1},
            "pvs": {"outputs": {"COUNT": {"type": "int", "value": 0}, "ECHO": {"type": "int", "value": 0},
                                "VIA_CA": {"type": "bool", "value": 0}}},
        })
""")


@pytest.mark.timeout(90)
def test_run_ioc_script(tmp_path: Path, client: Any) -> None:
    script = tmp_path / "counter.py"
    script.write_text(SCRIPT)
    prefix, pvout = random_prefix(), tmp_path / "pvs.txt"
    ports = EpicsPorts.allocate()
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), prefix, str(pvout)],
            env=ports.env(),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        client.init(pva=False)

        def echoed() -> Any:
            if proc.poll() is not None:
                pytest.fail(f"the script exited with {proc.returncode}:\n{log.read_text()}")
            return client.get(f"{prefix}:ECHO", timeout=1.0)

        assert wait_for_sync(echoed, timeout=30, interval=0.2, what="ECHO") >= 2
        assert client.get(f"{prefix}:VIA_CA") == 1
        assert client.get(f"{prefix}:COUNT") >= 3
        client.close()  # before the IOC goes
        assert f"{prefix}:COUNT" in pvout.read_text().split()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()
    assert "cleanup ran" in log.read_text()
