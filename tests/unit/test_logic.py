"""The rule engine (iocmng.logic.Logic): compile-time checks, latches, CLEAR/RESET, actuators, messages.

Logic is pure: these tests play the runtime with a dict of record values
(:class:`Plant`), as iocmng.wiring does with the real records.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

import pytest
from conftest import REFERENCE_2_7_9

from iocmng.config.models import PluginConfig, parse_config
from iocmng.declarative.expressions import EvaluationBudgetExceeded, ExpressionEvaluationError
from iocmng.declarative.logic import Logic, Outcome
from iocmng.errors import ConfigError

#: The declarative example of the iocmng 2.7.9 README, verbatim (tests/reference_2_7_9/README.md).
README_DECLARATIVE = (REFERENCE_2_7_9 / "interlock" / "config.yaml").read_text()


def logic_of(text: str, functions: dict[str, Any] | None = None) -> Logic:
    cfg = parse_config(text)
    return Logic(cfg, cfg.parameters, functions)


def compile_errors(text: str, functions: dict[str, Any] | None = None) -> dict[str, str]:
    """Build the Logic of a config that must be refused; return {loc: msg}."""
    cfg = parse_config(text)
    with pytest.raises(ConfigError) as info:
        Logic(cfg, cfg.parameters, functions)
    assert info.value.status == 422
    assert info.value.errors
    return {e["loc"]: e["msg"] for e in info.value.errors}


class Plant:
    """Record values, ring buffers, and the Logic that drives the outputs, as the runtime keeps them."""

    def __init__(self, text: str, functions: dict[str, Any] | None = None) -> None:
        self.config: PluginConfig = parse_config(text)
        self.logic = Logic(self.config, self.config.parameters, functions)
        self.values: dict[str, Any] = {n: s.value for n, s in self.config.all_pvs().items()}
        self.buffers = {
            n: deque(maxlen=s.buffer_size)
            for n, s in self.config.all_pvs().items()
            if s.buffer_size
        }
        self.written: list[tuple[str, Any]] = []  # actuator writes, in order
        self.messages: list[tuple[str, str, str | None]] = []

    def env(self) -> dict[str, Any]:
        env = dict(self.config.parameters)
        env.update(self.values)
        env.update({f"{n}_buf": list(b) for n, b in self.buffers.items()})
        return env

    def set(self, **values: Any) -> None:
        for name, value in values.items():
            self.values[name] = value
            if name in self.buffers:
                self.buffers[name].append(value)

    def step(self, changed: set[str] | None = None, **values: Any) -> Outcome:
        self.set(**values)
        out = self.logic.evaluate(self.env(), changed)
        self.values.update(out.outputs)
        self.written += out.actuators
        self.messages += out.messages
        return out

    def clear(self) -> dict[str, Any]:
        released = self.logic.clear()
        self.values.update(released)
        return released

    def reset(self) -> dict[str, Any]:
        released = self.logic.reset()
        self.values.update(released)
        return released


# -- the reference README's declarative example --------------------------------------------------------
def test_readme_example_compiles() -> None:
    logic = Plant(README_DECLARATIVE).logic
    assert not logic.empty
    assert [t[0] for t in logic.transforms] == ["avg_temp"]
    assert [r.id for r in logic.rules] == ["OVER_TEMP"]
    assert logic.latching == {"alarm": "rise"}
    assert logic.defaults == {"alarm": 0}


def test_readme_example_fires_on_the_buffer_mean_or_pressure() -> None:
    p = Plant(README_DECLARATIVE)
    out = p.step(temp=20.0, pressure=1.0)
    assert out.fired == [] and out.errors == []
    assert out.outputs == {"avg_temp": 20.0, "alarm": 0}
    # the last reading is over 80 but the mean of the buffer is not
    p.step(temp=70.0)
    out = p.step(temp=150.0)
    assert p.values["avg_temp"] == pytest.approx(80.0)
    assert out.fired == [] and p.values["alarm"] == 0
    out = p.step(temp=100.0)  # mean of 20, 70, 150, 100 = 85
    assert p.values["avg_temp"] == pytest.approx(85.0)
    assert out.fired == ["OVER_TEMP"] and p.values["alarm"] == 1


def test_readme_example_pressure_alone_fires() -> None:
    p = Plant(README_DECLARATIVE)
    assert p.step(temp=20.0, pressure=2.0).fired == []  # not strictly over 2.0
    out = p.step(pressure=2.5)
    assert out.fired == ["OVER_TEMP"]
    assert out.outputs["alarm"] == 1
    assert len(out.messages) == 1
    rule, text, pv = out.messages[0]
    assert (rule, pv) == ("OVER_TEMP", None)
    assert text.endswith(" - Temperature or pressure limit exceeded")
    assert re.match(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d - ", text)


def test_readme_example_empty_buffer_mean_is_zero() -> None:
    p = Plant(README_DECLARATIVE)
    out = p.step(pressure=0.5)  # no temperature reading yet
    assert out.errors == []
    assert out.outputs["avg_temp"] == 0.0 and out.outputs["alarm"] == 0


def test_readme_example_alarm_latches_until_clear() -> None:
    p = Plant(README_DECLARATIVE)
    p.step(temp=20.0, pressure=1.0)
    p.step(pressure=3.0)
    assert p.values["alarm"] == 1 and p.logic.latched == {"alarm"}
    # the condition clears: rule_defaults does not touch the latched output
    for _ in range(3):
        out = p.step(pressure=1.0)
        assert out.fired == []
        assert "alarm" not in out.outputs
        assert p.values["alarm"] == 1
    assert p.clear() == {"alarm": 0}
    assert p.values["alarm"] == 0 and p.logic.latched == set()
    assert p.step(pressure=1.0).outputs["alarm"] == 0
    # a new rise latches again at once (the rule had stopped firing before CLEAR)
    p.step(pressure=3.0)
    assert p.logic.latched == {"alarm"}
    p.step(pressure=1.0)
    assert p.values["alarm"] == 1


def test_clear_while_firing_does_not_relatch_until_the_rule_stops_once() -> None:
    p = Plant(README_DECLARATIVE)
    p.step(temp=20.0, pressure=3.0)
    assert p.logic.latched == {"alarm"}
    assert p.clear() == {"alarm": 0}
    assert p.logic.inhibit == {"alarm"}
    # still firing: the rule sets alarm, but it is not latched again
    for _ in range(2):
        out = p.step(pressure=3.0)
        assert out.fired == ["OVER_TEMP"] and out.outputs["alarm"] == 1
        assert p.logic.latched == set()
        assert out.messages == []  # the same firing: no new message
    # one evaluation without firing: the default applies (nothing latched), the inhibit is lifted
    out = p.step(pressure=1.0)
    assert out.outputs["alarm"] == 0 and p.values["alarm"] == 0
    assert p.logic.inhibit == set()
    # the next firing latches again
    out = p.step(pressure=3.0)
    assert p.logic.latched == {"alarm"}
    assert len(out.messages) == 1
    p.step(pressure=1.0)
    assert p.values["alarm"] == 1


def test_clear_with_nothing_latched_releases_nothing() -> None:
    p = Plant(README_DECLARATIVE)
    p.step(temp=20.0, pressure=1.0)
    assert p.clear() == {}
    assert p.logic.inhibit == set()


def test_reset_releases_and_forgets_fired_rules() -> None:
    p = Plant(README_DECLARATIVE)
    assert len(p.step(temp=20.0, pressure=3.0).messages) == 1
    assert p.step(pressure=3.0).messages == []
    assert p.reset() == {"alarm": 0}
    assert p.logic.latched == set() and p.logic.firing == set()
    # still firing after RESET: the message is shown again
    out = p.step(pressure=3.0)
    assert out.fired == ["OVER_TEMP"]
    assert len(out.messages) == 1
    assert p.logic.latched == set()  # RESET is a CLEAR too: no re-latch while firing on
    p.step(pressure=1.0)
    assert p.values["alarm"] == 0


# -- compile-time checks -------------------------------------------------------------------------------
BASE = """\
arguments:
  inputs: {temp: {buffer_size: 5}, bypass: {type: bool}}
  outputs: {out: {}, flag: {type: bool}}
parameters: {limit: 10}
"""


def rule_config(condition: str) -> str:
    return BASE + f"rules: [{{id: CHECK, condition: {condition!r}, outputs: {{flag: 1}}}}]\n"


def transform_config(expression: str) -> str:
    return (
        BASE
        + f"transforms: [{{output: out, expression: 'temp'}}, {{output: out, expression: {expression!r}}}]\n"
    )


REFUSED = [
    ("nope > 1", "unknown name 'nope'"),
    ("frob(temp) > 1", "unknown function 'frob'"),
    ("temp.real > 1", "attribute access"),
    ("temp.__class__", "attribute access"),
    ("__import__('os')", "dunder"),
    ("__builtins__ > 1", "dunder"),
    ("lambda: temp", "lambda"),
    ("(lambda: 1)() > 0", "only library functions"),
    ("[x for x in temp_buf]", "comprehension"),
    ("any_of(x > 1 for x in temp_buf)", "comprehension"),
    ("10**10**10", "4096-bit"),
    ("temp > 99999999999999999999999", "too large"),
    ("temp >", "syntax error"),
    ("temp = 1", "syntax error"),
    ("mean > 1", "is a function"),
    ("temp[0] > 1", "subscript"),
]


@pytest.mark.parametrize("text,word", REFUSED)
def test_refused_condition_is_named_by_its_rule(text: str, word: str) -> None:
    errs = compile_errors(rule_config(text))
    assert set(errs) == {"rules.CHECK.condition"}
    assert word in errs["rules.CHECK.condition"], errs
    assert text in errs["rules.CHECK.condition"]


@pytest.mark.parametrize("text,word", REFUSED)
def test_refused_transform_is_named_by_its_index(text: str, word: str) -> None:
    errs = compile_errors(transform_config(text))
    assert set(errs) == {"transforms.1.expression"}
    assert word in errs["transforms.1.expression"], errs


def test_every_refused_expression_is_reported() -> None:
    errs = compile_errors(
        BASE + "transforms: [{output: out, expression: 'ghost + 1'}]\n"
        "rules:\n  - {id: A, condition: 'temp.x', outputs: {flag: 1}}\n"
        "  - {id: B, condition: 'temp > limit', outputs: {flag: 1}}\n"
        "  - {condition: 'nope(1)', outputs: {flag: 1}}\n"
    )
    assert set(errs) == {"transforms.0.expression", "rules.A.condition", "rules.rule-3.condition"}


def test_names_expressions_may_read() -> None:
    # inputs, outputs, parameters, buffers and transform results
    logic = logic_of(
        BASE + "transforms: [{output: out, expression: 'mean(temp_buf) + limit'}]\n"
        "rules: [{id: R, condition: 'out > limit and not bypass and flag == 0', outputs: {flag: 1}}]\n"
    )
    env = {"temp": 0.0, "temp_buf": [1.0, 3.0], "bypass": 0, "flag": 0, "out": 0.0, "limit": 10}
    out = logic.evaluate(env)
    assert out.outputs == {"out": 12.0, "flag": 1}
    assert env["out"] == 12.0  # the env is updated with transform results


def test_a_buffer_needs_buffer_size() -> None:
    errs = compile_errors(
        BASE + "rules: [{id: R, condition: 'mean(bypass_buf) > 0', outputs: {flag: 1}}]\n"
    )
    assert "unknown name 'bypass_buf'" in errs["rules.R.condition"]


def test_plugin_functions() -> None:
    text = rule_config("twice(temp) > 3")
    assert "unknown function 'twice'" in compile_errors(text)["rules.CHECK.condition"]
    logic = logic_of(text, functions={"twice": lambda x: 2 * x})
    assert logic.evaluate({"temp": 2.0}).fired == ["CHECK"]
    assert logic_of(text, functions={"twice": lambda x: 2 * x}).evaluate({"temp": 1.0}).fired == []


def test_plugin_function_may_not_replace_a_library_function() -> None:
    errs = compile_errors(rule_config("mean(temp_buf) > 3"), functions={"mean": lambda x: 0})
    assert "library function" in errs["rules.CHECK.condition"]
    assert "'mean'" in errs["rules.CHECK.condition"]


def test_plugin_function_must_be_callable() -> None:
    errs = compile_errors(rule_config("twice(temp) > 3"), functions={"twice": 2})
    assert "not callable" in errs["rules.CHECK.condition"]


# -- rule_defaults and several writers ---------------------------------------------------------------------
MULTI = """\
arguments:
  inputs: {a: {}, b: {}}
  outputs: {code: {type: int}, other: {type: int}}
rule_defaults: {code: 7}
rules:
  - {id: FIRST, condition: "a > 0", outputs: {code: 1}}
  - {id: SECOND, condition: "b > 0", outputs: {code: 2, other: 5}}
"""


def test_rule_defaults_apply_each_evaluation() -> None:
    p = Plant(MULTI)
    p.values["code"] = 99  # e.g. written by someone else
    out = p.step(a=0, b=0)
    assert out.outputs == {"code": 7}  # `other` has no default and no firing rule: untouched
    p.step(a=1)
    assert p.values["code"] == 1
    assert p.step(a=0).outputs == {"code": 7}
    assert p.values["code"] == 7


def test_later_rule_wins() -> None:
    p = Plant(MULTI)
    out = p.step(a=1, b=1)
    assert out.fired == ["FIRST", "SECOND"]
    assert out.outputs == {"code": 2, "other": 5}
    assert p.step(b=0).outputs == {"code": 1}
    assert p.values["other"] == 5  # no default: it keeps its value


# -- latch directions -------------------------------------------------------------------------------------
def latch_config(direction: str) -> str:
    return f"""\
arguments:
  inputs: {{up: {{}}, down: {{}}}}
  outputs: {{level: {{type: int, latch: true, latch_dir: '{direction}'}}}}
rule_defaults: {{level: 5}}
rules:
  - {{id: UP, condition: "up > 0", outputs: {{level: 1}}}}
  - {{id: DOWN, condition: "down > 0", outputs: {{level: 0}}}}
"""


@pytest.mark.parametrize(
    "direction,latched_by_up,latched_by_down",
    [
        ("rise", True, False),
        ("0->1", True, False),
        ("fall", False, True),
        ("1->0", False, True),
        ("any", True, True),
    ],
)
def test_latch_direction(direction: str, latched_by_up: bool, latched_by_down: bool) -> None:
    for rule, value, latches in (("up", 1, latched_by_up), ("down", 0, latched_by_down)):
        p = Plant(latch_config(direction))
        p.step(up=0, down=0)
        assert p.values["level"] == 5
        p.step(**{rule: 1})
        assert p.values["level"] == value
        p.step(**{rule: 0})
        # latched: the value the rule set holds; not latched: the default comes back
        assert p.values["level"] == (value if latches else 5), (direction, rule)
        assert p.logic.latched == ({"level"} if latches else set())
        if latches:
            assert p.clear() == {"level": 5}
            assert p.values["level"] == 5


def test_latched_output_ignores_other_writers_until_clear() -> None:
    p = Plant(latch_config("fall"))
    p.step(up=0, down=1)
    assert p.values["level"] == 0 and p.logic.latched == {"level"}
    # a later rule writing the latched output still writes it (rules are not masked by a latch)
    p.step(up=1, down=0)
    assert p.values["level"] == 1
    p.step(up=0)
    assert p.values["level"] == 1  # neither the default
    assert p.logic.latched == {"level"}


def test_latch_without_default_clears_to_nothing() -> None:
    p = Plant("""\
arguments:
  inputs: {x: {}}
  outputs: {trip: {type: bool, latch: true}}
rules: [{id: TRIP, condition: "x > 1", outputs: {trip: 1}}]
""")
    p.step(x=2)
    assert p.logic.latched == {"trip"}
    assert p.clear() == {}  # no rule_defaults entry: nothing to write back
    assert p.logic.latched == set()


# -- actuators ---------------------------------------------------------------------------------------------
ACT = """\
arguments:
  inputs:
    temp: {}
    valve: {type: int, link: "DEV:VALVE"}
  outputs:
    heater: {type: int, link: "pva://DEV:HEATER"}
rules:
  - {id: HOT, condition: "temp > 50", actuators: {valve: 0, heater: 0}, actuate: ACTUATE}
"""


def test_actuators_write_on_change_only() -> None:
    p = Plant(ACT.replace("ACTUATE", "change"))
    assert p.step(temp=60).actuators == [("valve", 0), ("heater", 0)]
    for _ in range(3):
        out = p.step(temp=70)
        assert out.fired == ["HOT"]
        assert out.actuators == []
    assert p.step(temp=20).actuators == []
    # firing again writes again
    assert p.step(temp=60).actuators == [("valve", 0), ("heater", 0)]
    assert p.written == [("valve", 0), ("heater", 0)] * 2


def test_actuators_written_by_default_change_semantics() -> None:
    cfg = parse_config(ACT.replace(", actuate: ACTUATE", ""))
    assert cfg.rules[0].actuate == "change"
    logic = Logic(cfg, cfg.parameters)
    assert logic.evaluate({"temp": 60}).actuators == [("valve", 0), ("heater", 0)]
    assert logic.evaluate({"temp": 60}).actuators == []


def test_actuate_level_writes_every_evaluation() -> None:
    p = Plant(ACT.replace("ACTUATE", "level"))
    for _ in range(3):
        assert p.step(temp=60).actuators == [("valve", 0), ("heater", 0)]
    assert p.step(temp=20).actuators == []
    assert len(p.written) == 6


def test_reset_writes_actuators_again() -> None:
    p = Plant(ACT.replace("ACTUATE", "change"))
    p.step(temp=60)
    assert p.step(temp=60).actuators == []
    p.reset()
    assert p.step(temp=60).actuators == [("valve", 0), ("heater", 0)]


def test_clear_does_not_rewrite_actuators() -> None:
    p = Plant(ACT.replace("ACTUATE", "change"))
    p.step(temp=60)
    p.clear()
    assert p.step(temp=60).actuators == []


# -- messages ---------------------------------------------------------------------------------------------
MSG = """\
arguments:
  inputs: {x: {}}
  outputs: {note: {type: string}, flag: {type: bool}}
rules:
  - {id: HIGH, condition: "x > 10", message: "x is high", message_pv: note, outputs: {flag: 1}}
  - {id: QUIET, condition: "x > 10", outputs: {flag: 1}}
"""


def test_messages_only_on_the_firing_edge() -> None:
    p = Plant(MSG)
    assert p.step(x=0).messages == []
    out = p.step(x=11)
    assert [(m[0], m[2]) for m in out.messages] == [("HIGH", "note")]  # QUIET has no message
    assert out.messages[0][1].endswith(" - x is high")
    assert out.fired == ["HIGH", "QUIET"]
    assert p.step(x=12).messages == []
    assert p.step(x=13).messages == []
    assert p.step(x=0).messages == []
    assert len(p.step(x=20).messages) == 1
    assert len(p.messages) == 2


# -- expression errors at run time ----------------------------------------------------------------------------
ERR = """\
arguments:
  inputs: {x: {}, y: {}}
  outputs: {root: {}, ratio: {}, ok: {type: bool}, big: {type: bool}}
transforms:
  - {output: root, expression: "sqrt(x)"}
  - {output: ratio, expression: "1 / y"}
rules:
  - {id: NEG_ROOT, condition: "sqrt(x) > 1", outputs: {big: 1}}
  - {id: DIV, condition: "10 / y > 1", outputs: {big: 1}}
  - {id: FINE, condition: "x < 0", outputs: {ok: 1}}
"""


def test_expression_errors_do_not_stop_the_others() -> None:
    logic = logic_of(ERR)
    env = {"x": -1.0, "y": 0.0, "root": 0.0, "ratio": 0.0, "ok": 0, "big": 0}
    out = logic.evaluate(env)
    where = [w for w, _ in out.errors]
    assert where == ["transform root", "transform ratio", "rule NEG_ROOT", "rule DIV"]
    assert all(isinstance(e, ExpressionEvaluationError) for _, e in out.errors)
    assert "ZeroDivisionError" in str(out.errors[1][1])
    assert "ValueError" in str(out.errors[0][1])
    assert out.fired == ["FINE"]
    assert out.outputs == {"ok": 1}  # failed transforms write nothing
    assert env["root"] == 0.0


def test_expression_errors_go_away_with_good_values() -> None:
    logic = logic_of(ERR)
    out = logic.evaluate({"x": 4.0, "y": 2.0, "root": 0.0, "ratio": 0.0, "ok": 0, "big": 0})
    assert out.errors == []
    assert out.outputs == {"root": 2.0, "ratio": 0.5, "big": 1}
    assert out.fired == ["NEG_ROOT", "DIV"]


def test_missing_value_is_an_error() -> None:
    out = logic_of(ERR).evaluate({"y": 2.0})
    assert "rule NEG_ROOT" in [w for w, _ in out.errors]
    assert "no value for 'x'" in str(dict(out.errors)["rule NEG_ROOT"])


# -- partial evaluation ------------------------------------------------------------------------------------------
PART = """\
parameters: {mode: reactive, limit: 10}
arguments:
  inputs: {a: {buffer_size: 3}, b: {}, c: {}}
  outputs: {sa: {}, sb: {}, fa: {type: int}, fb: {type: int}, fc: {type: int}}
transforms:
  - {output: sa, expression: "mean(a_buf) * 2"}
  - {output: sb, expression: "b + 1"}
rule_defaults: {fa: 0, fb: 0, fc: 0}
rules:
  - {id: RA, condition: "sa > limit", outputs: {fa: 1}}
  - {id: RB, condition: "sb > 1", outputs: {fb: 1}}
  - {id: RC, condition: "c > 0", outputs: {fa: 2, fc: 1}}
"""


def env_of(a: list[float], b: float, c: float) -> dict[str, Any]:
    return {
        "limit": 10,
        "a": a[-1],
        "a_buf": a,
        "b": b,
        "c": c,
        "sa": 0.0,
        "sb": 0.0,
        "fa": 0,
        "fb": 0,
        "fc": 0,
    }


@pytest.mark.parametrize(
    "changed,touched",
    [
        ({"b"}, {"sb", "fb"}),
        ({"a", "a_buf"}, {"sa", "fa"}),
        ({"a_buf"}, {"sa", "fa"}),
        ({"c"}, {"fa", "fc"}),  # RA writes fa too, so it is evaluated again; sa is not recomputed
        (set(), set()),
        ({"unrelated"}, set()),
    ],
)
@pytest.mark.parametrize("values", [([1.0, 9.0], 3.0, 0.0), ([1.0], 0.0, 1.0), ([20.0], 1.0, 1.0)])
def test_partial_evaluation_touches_only_dependents(
    changed: set[str], touched: set[str], values: tuple[list[float], float, float]
) -> None:
    full = logic_of(PART).evaluate(env_of(*values))
    env = env_of(*values)
    if "sa" not in touched:  # an untouched transform keeps its last value in the env
        env["sa"] = full.outputs["sa"]
    part = logic_of(PART).evaluate(env, changed=changed)
    # RC writes fa as RA does, so a change of a evaluates it too, and then fc (which RC writes) is
    # evaluated as a whole: its default or RC's value, as a full evaluation gives
    expected = touched | ({"fc"} if "fa" in touched else set())
    assert set(part.outputs) == expected
    for name in expected:
        assert part.outputs[name] == full.outputs[name], name
    assert set(part.fired) <= set(full.fired)
    assert part.errors == []


def test_partial_evaluation_sees_the_transform_it_recomputes() -> None:
    logic = logic_of(PART)
    logic.evaluate(env_of([1.0], 0.0, 0.0))
    out = logic.evaluate(env_of([1.0, 20.0], 0.0, 0.0), changed={"a_buf"})
    assert out.outputs == {"sa": 21.0, "fa": 1, "fc": 0}
    assert out.fired == ["RA"]


def test_partial_evaluation_keeps_latches_and_edges() -> None:
    p = Plant(PART.replace("fb: {type: int}", "fb: {type: int, latch: true}"))
    p.step(a=1.0, b=0.0, c=0.0)
    p.step(changed={"b"}, b=5.0)
    assert p.values["fb"] == 1 and p.logic.latched == {"fb"}
    out = p.step(changed={"b"}, b=0.0)
    assert "fb" not in out.outputs and p.values["fb"] == 1
    out = p.step(changed={"a", "a_buf"}, a=1.0)  # does not touch fb
    assert "fb" not in out.outputs


# -- affected outputs ---------------------------------------------------------------------------------------------
AFFECT = """\
arguments:
  inputs:
    temp: {link: "DEV:TEMP", buffer_size: 10}
    pres: {link: "DEV:PRES"}
    flow: {link: "DEV:FLOW"}
    other: {}
  outputs:
    avg: {}
    scaled: {}
    hot: {type: bool}
    high_p: {type: bool}
    note: {type: string}
    free: {}
transforms:
  - {output: avg, expression: "mean(temp_buf)"}
  - {output: scaled, expression: "avg * 2"}
rules:
  - {id: HOT, condition: "scaled > 100", outputs: {hot: 1}}
  - {id: HIGH_P, condition: "pres > 2", outputs: {high_p: 1}, message: "high", message_pv: note}
  - {id: FLOW, condition: "flow < 1", actuators: {flow: 5}}
"""


def test_affected_outputs_follow_transforms_and_buffers() -> None:
    logic = logic_of(AFFECT)
    assert logic.affected_outputs({"temp"}) == {"avg", "scaled", "hot"}
    assert logic.affected_outputs({"pres"}) == {"high_p", "note"}
    assert logic.affected_outputs({"temp", "pres"}) == {"avg", "scaled", "hot", "high_p", "note"}
    # actuators are not outputs; an unread input affects nothing
    assert logic.affected_outputs({"flow"}) == set()
    assert logic.affected_outputs({"other"}) == set()
    assert logic.affected_outputs(set()) == set()


def test_affected_outputs_of_a_transform_chain_rule() -> None:
    logic = logic_of("""\
arguments:
  inputs: {temp: {link: "DEV:TEMP", buffer_size: 4}}
  outputs: {t1: {}, alarm: {type: bool}}
transforms: [{output: t1, expression: "max(temp_buf)"}]
rules: [{id: R, condition: "t1 > 5", outputs: {alarm: 1}}]
""")
    assert logic.affected_outputs({"temp"}) == {"t1", "alarm"}


# -- an empty logic -------------------------------------------------------------------------------------------------
def test_no_rules_no_transforms() -> None:
    logic = logic_of(
        "arguments: {inputs: {x: {link: 'D:X'}}, outputs: {y: {type: bool, latch: true}}}\n"
    )
    assert logic.empty
    out = logic.evaluate({"x": 1})
    assert (out.outputs, out.actuators, out.messages, out.errors, out.fired) == ({}, [], [], [], [])
    assert logic.latching == {"y": "rise"}
    assert logic.clear() == {} and logic.reset() == {}


def test_transforms_only() -> None:
    logic = logic_of(
        "arguments: {inputs: {x: {}}, outputs: {y: {}, z: {}}}\n"
        "transforms: [{output: y, expression: 'x * 2'}, {output: z, expression: 'y + 1'}]\n"
    )
    assert not logic.empty
    env = {"x": 3, "y": 0, "z": 0}
    assert logic.evaluate(env).outputs == {"y": 6, "z": 7}
    assert logic.evaluate({"x": 1, "y": 0, "z": 0}, changed={"x"}).outputs == {"y": 2, "z": 3}


# A rule reached through a shared output writes another output a later rule also writes.
COWRITERS = """
arguments:
  inputs: {a: {}, c: {}, d: {}}
  outputs: {fa: {type: int}, fc: {type: int}}
rule_defaults: {fa: 0, fc: 0}
rules:
  - {id: RA, condition: "a > 0", outputs: {fa: 1}}
  - {id: RC, condition: "c > 0", outputs: {fa: 2, fc: 1}}
  - {id: RD, condition: "d > 0", outputs: {fc: 3}}
"""


def test_partial_evaluation_matches_full_for_every_output_it_writes() -> None:
    cfg = parse_config(COWRITERS)
    env = {"a": 1, "c": 1, "d": 1, "fa": 0, "fc": 0}
    full = Logic(cfg, {}).evaluate(dict(env)).outputs
    part = Logic(cfg, {}).evaluate(dict(env), changed={"a"}).outputs
    assert full == {"fa": 2, "fc": 3}
    for name, value in part.items():
        assert value == full[name], (name, value, full[name])


# -- cost bounds (issue 14, item 3): transform chains, the per-evaluation budget ----------------------------------
def chain_config(length: int, step: str = "t{p} * t{p}", first: str = "x") -> str:
    outputs = ", ".join(f"t{i}: {{}}" for i in range(1, length + 1))
    transforms = [f"{{output: t1, expression: '{first}'}}"]
    transforms += [
        f"{{output: t{i}, expression: '{step.format(p=i - 1)}'}}" for i in range(2, length + 1)
    ]
    return f"arguments: {{inputs: {{x: {{}}}}, outputs: {{{outputs}}}}}\ntransforms: [{', '.join(transforms)}]\n"


def test_a_transform_chain_longer_than_the_limit_is_refused() -> None:
    logic_of(chain_config(32))  # the limit itself is accepted
    errs = compile_errors(chain_config(40))
    assert set(errs) == {
        "transforms.32.expression"
    }  # reported once, at the transform past the limit
    msg = errs["transforms.32.expression"]
    assert "'t32 * t32'" in msg and "chain of 33 transforms" in msg and "limit of 32" in msg
    assert "t1 -> t2 -> t3 -> ... -> t32 -> t33" in msg


def test_independent_transforms_are_no_chain() -> None:
    cfg = (
        "arguments: {inputs: {x: {}}, outputs: {"
        + ", ".join(f"o{i}: {{}}" for i in range(60))
        + "}}\n"
        "transforms: ["
        + ", ".join(f"{{output: o{i}, expression: 'x + {i}'}}" for i in range(60))
        + "]\n"
    )
    assert logic_of(cfg).evaluate({"x": 1}).outputs["o59"] == 60


def test_a_transform_reading_its_own_output_is_no_chain() -> None:
    # t reads the record's value (the previous cycle's), not a transform of this evaluation
    cfg = "arguments: {inputs: {x: {}}, outputs: {t: {}}}\ntransforms: [{output: t, expression: 't * 2 + x'}]\n"
    assert logic_of(cfg).evaluate({"x": 1, "t": 3}).outputs == {"t": 7}


@pytest.mark.parametrize(
    ("step", "first", "x", "match"),
    [
        ("t{p} * t{p}", "x", 3, "4096-bit limit"),  # squaring: 16 s at step 21 before
        ("t{p} + t{p}", "x", "ab", "limit of 10000"),  # doubling a string
        ("t{p} + t{p}", "[x]", 1.0, "limit of 100000 elements"),  # doubling a list
        ("[t{p}]", "[[x]]", 1.0, "nested more than 32 levels"),  # nesting a list
    ],
)
def test_a_doubling_transform_chain_fails_at_the_caps(
    step: str, first: str, x: Any, match: str
) -> None:
    logic = logic_of(chain_config(32, step, first))
    env = {"x": x, **{f"t{i}": 0 for i in range(1, 33)}}
    out = logic.evaluate(env)
    assert out.errors, "the chain should hit a cap"
    where, exc = out.errors[0]
    assert where.startswith("transform t") and isinstance(exc, ExpressionEvaluationError)
    assert re.search(match, str(exc)), exc


def slow(seconds: float) -> Any:
    def fn(x: Any) -> Any:
        import time

        time.sleep(seconds)
        return x

    return fn


BUDGET = """\
arguments:
  inputs: {x: {}}
  outputs: {t1: {}, t2: {}, t3: {}, t4: {}, flag: {type: bool}, alarm: {type: bool, latch: true}}
rule_defaults: {flag: 0, alarm: 0}
transforms:
  - {output: t1, expression: "x + 1"}
  - {output: t2, expression: "wait(t1)"}
  - {output: t3, expression: "wait(t2)"}
  - {output: t4, expression: "wait(t3)"}
rules:
  - {id: HIGH, condition: "x > 0", outputs: {alarm: 1}, message: "high"}
  - {id: SLOW, condition: "wait(x) > 0", outputs: {flag: 1}}
"""


def test_the_budget_covers_all_transforms_and_rules_together() -> None:
    cfg = parse_config(BUDGET)
    logic = Logic(
        cfg, {}, {"wait": slow(0.05)}, budget=0.12
    )  # 3 x 0.05 s in transforms, 0.05 s in a rule
    with pytest.raises(EvaluationBudgetExceeded, match="more than its budget of 0.12 s") as info:
        logic.evaluate({"x": 1})
    # where it ran out: one of the slow ones (the 3rd, unless the machine is slow)
    assert info.value.expression in {"wait(t1)", "wait(t2)", "wait(t3)"}
    assert isinstance(info.value, ExpressionEvaluationError) and info.value.status == 422
    assert logic.firing == set() and logic.latched == set()


def test_a_budget_run_out_in_the_rules_changes_no_latch() -> None:
    cfg = parse_config(BUDGET[: BUDGET.index("transforms:")] + BUDGET[BUDGET.index("rules:") :])
    logic = Logic(cfg, {}, {"wait": slow(0.06)}, budget=0.05)
    with pytest.raises(ExpressionEvaluationError, match="budget") as info:
        logic.evaluate({"x": 1})
    assert info.value.expression == "wait(x) > 0"
    assert (
        logic.latched == set() and logic.firing == set()
    )  # HIGH was true, but nothing of it applied
    out = Logic(cfg, {}, {"wait": slow(0.0)}).evaluate({"x": 1})
    assert out.fired == ["HIGH", "SLOW"] and out.outputs["alarm"] == 1


def test_the_helpers_stop_an_expression_past_the_budget() -> None:
    # one transform that is slow by itself (a bounded list op repeated): the helpers see the deadline
    text = " + ".join(["l"] * 30)
    cfg = parse_config(
        "arguments: {inputs: {l: {}}, outputs: {t: {}}}\n"
        f"transforms: [{{output: t, expression: '{text} == []'}}]\n"
    )
    with pytest.raises(
        ExpressionEvaluationError,
        match="budget of the plugin.s transforms and rules ran out in this expression",
    ):
        Logic(cfg, {}, budget=0.0).evaluate({"l": [0.0] * 400})


def test_ordinary_evaluations_are_far_under_the_budget() -> None:
    p = Plant(README_DECLARATIVE)
    for i in range(100):
        assert p.step(temp=20.0 + i, pressure=1.0).errors == []  # never raises; the default budget
    assert p.logic.budget == 0.5
