"""Rules, transforms and latches of a plugin's config.yaml: compiled once, evaluated per cycle.

:class:`Logic` is pure: it reads values and returns what to write (an
:class:`Outcome`); the runtime applies the writes to records and links. So a
cycle's logic is testable without EPICS, and it costs nothing when a plugin
declares no rules.

One evaluation::

    transforms (in order; later ones see earlier results)
    -> rule_defaults (outputs not latched)
    -> rules (in order; a firing rule sets its outputs, latches them,
       writes its actuators, shows its message once per firing)

Expressions see every input, output, parameter, ``<name>_buf`` ring buffer and
transform result. A partial evaluation (``changed=...``, used by reactive
tasks) re-evaluates only what depends on the changed names, and gives the same
values for what it touches as a full one.

Cost is bounded: a chain of transforms each reading the one before may be at
most :data:`~iocmng.declarative.expression_library.MAX_TRANSFORM_CHAIN` long (refused when
the config is compiled), and one evaluation of all the transforms and rules
together may take at most ``budget`` seconds
(:data:`~iocmng.declarative.expression_library.EVALUATION_BUDGET`): past it the evaluation
stops with :class:`~iocmng.declarative.expressions.EvaluationBudgetExceeded`, a failed cycle.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.models import PluginConfig
from ..errors import ConfigError
from .expression_library import (
    BUILTIN_FUNCTIONS,
    EVALUATION_BUDGET,
    MAX_TRANSFORM_CHAIN,
    reset_deadline,
    set_deadline,
)
from .expressions import EvaluationBudgetExceeded, Expression, ExpressionError, compile_expression

BUFFER_SUFFIX = "_buf"


def expression_names(
    config: PluginConfig, parameters: Mapping[str, Any], functions: Iterable[str] = ()
) -> set[str]:
    """The variables expressions of this plugin may read (function names excluded)."""
    names = set(config.all_pvs()) | {k for k in parameters if isinstance(k, str)}
    names |= {f"{n}{BUFFER_SUFFIX}" for n, s in config.all_pvs().items() if s.buffer_size}
    names |= {t.output for t in config.transforms}
    taken = set(BUILTIN_FUNCTIONS) | set(functions)
    return {n for n in names if n.isidentifier() and not n.startswith("_") and n not in taken}


@dataclass
class Outcome:
    """What one evaluation asks for."""

    outputs: dict[str, Any] = field(default_factory=dict)
    actuators: list[tuple[str, Any]] = field(default_factory=list)
    messages: list[tuple[str, str, str | None]] = field(
        default_factory=list
    )  # (rule, text, message_pv)
    errors: list[tuple[str, Exception]] = field(default_factory=list)  # (where, error)
    fired: list[str] = field(default_factory=list)


@dataclass
class _Rule:
    id: str
    condition: Expression
    outputs: dict[str, Any]
    actuators: dict[str, Any]
    message: str
    message_pv: str | None
    level: bool
    deps: frozenset[str]  # names the condition reads, through transforms


class Logic:
    """The compiled logic of one plugin, with its latch state.

    ``budget`` is the most seconds one :meth:`evaluate` may take.
    """

    def __init__(
        self,
        config: PluginConfig,
        parameters: Mapping[str, Any],
        functions: Mapping[str, Callable[..., Any]] | None = None,
        *,
        budget: float = EVALUATION_BUDGET,
    ) -> None:
        self.config = config
        self.budget = budget
        names = expression_names(config, parameters, functions or {})
        errors: list[dict[str, str]] = []

        def compile_at(loc: str, text: str) -> Expression | None:
            try:
                return compile_expression(text, names, functions)
            except ExpressionError as exc:
                errors.append({"loc": loc, "msg": exc.detail})
                return None

        self.transforms: list[tuple[str, Expression, frozenset[str]]] = []
        closure: dict[str, frozenset[str]] = {}  # transform output -> base names it reads
        # transform output -> the longest chain of transforms ending in it (each reading the one
        # before): each step may double a value's size, so a long chain is refused up front
        chain: dict[str, tuple[str, ...]] = {}
        for i, t in enumerate(config.transforms):
            expr = compile_at(f"transforms.{i}.expression", t.expression)
            if expr is not None:
                longest = max((chain[n] for n in expr.names if n in chain), key=len, default=())
                chain[t.output] = (*longest, t.output)
                if len(chain[t.output]) > MAX_TRANSFORM_CHAIN:
                    links = chain[t.output]
                    path = " -> ".join((*links[:3], "...", *links[-2:]))
                    errors.append(
                        {
                            "loc": f"transforms.{i}.expression",
                            "msg": ExpressionError(
                                t.expression,
                                f"a chain of {len(links)} transforms each reading the one before "
                                f"({path}) is longer than the limit of {MAX_TRANSFORM_CHAIN}",
                            ).detail,
                        }
                    )
                    chain[
                        t.output
                    ] = ()  # reported once: what reads it further is not refused again
                    continue
                deps = _expand(expr.names, closure)
                closure[t.output] = deps
                self.transforms.append((t.output, expr, deps))
        self.rules: list[_Rule] = []
        for rid, r in zip(config.rule_ids(), config.rules, strict=True):
            expr = compile_at(f"rules.{rid}.condition", r.condition)
            if expr is not None:
                self.rules.append(
                    _Rule(
                        rid,
                        expr,
                        dict(r.outputs),
                        dict(r.actuators),
                        r.message,
                        r.message_pv,
                        r.actuate == "level",
                        _expand(expr.names, closure),
                    )
                )
        if errors:
            raise ConfigError("config.yaml", errors)
        self.defaults = dict(config.rule_defaults)
        self.latching = {n: s.latch_dir for n, s in config.pvs.outputs.items() if s.latch}
        self.latched: set[str] = set()
        self.inhibit: set[str] = (
            set()
        )  # released by CLEAR: no re-latch until their rules stop firing
        self.firing: set[str] = set()
        self.actuated: dict[tuple[str, str], Any] = {}
        #: output -> the base names (inputs...) its value is computed from
        self.output_deps: dict[str, frozenset[str]] = {}
        for out, _, deps in self.transforms:
            self.output_deps[out] = self.output_deps.get(out, frozenset()) | deps
        for rule in self.rules:
            for out in [*rule.outputs, *([rule.message_pv] if rule.message_pv else [])]:
                self.output_deps[out] = self.output_deps.get(out, frozenset()) | rule.deps
        self.writers: dict[str, list[_Rule]] = {}
        for rule in self.rules:
            for out in rule.outputs:
                self.writers.setdefault(out, []).append(rule)

    @property
    def empty(self) -> bool:
        return not (self.transforms or self.rules)

    def affected_outputs(self, names: set[str]) -> set[str]:
        """Outputs computed from any of ``names`` (e.g. disconnected links)."""
        return {out for out, deps in self.output_deps.items() if deps & names}

    def evaluate(self, env: dict[str, Any], changed: set[str] | None = None) -> Outcome:
        """Evaluate against ``env`` (name -> value; updated with transform results).

        ``changed=None`` evaluates everything; otherwise only the transforms and
        rules that read a changed name (and the other rules writing the same outputs).
        An expression that fails is an error of the outcome; the others go on.

        Raises :class:`~iocmng.declarative.expressions.EvaluationBudgetExceeded` (naming the
        expression under way) when the evaluation takes more than ``budget``
        seconds; it stops there, and the latch and firing state are left as
        they were (rules are all evaluated before any of that state changes).
        """
        deadline = time.perf_counter() + self.budget
        token = set_deadline(deadline)  # the operator helpers check it on their costly paths
        try:
            return self._evaluate(env, changed, deadline)
        finally:
            reset_deadline(token)

    def _over_budget(self, expr: Expression, deadline: float) -> EvaluationBudgetExceeded:
        spent = time.perf_counter() - deadline + self.budget
        return EvaluationBudgetExceeded(
            expr.text,
            f"the evaluation of the plugin's transforms and rules "
            f"took {spent:.2f} s, more than its budget of {self.budget:g} s; "
            "stopped after this expression",
        )

    def _evaluate(self, env: dict[str, Any], changed: set[str] | None, deadline: float) -> Outcome:
        out = Outcome()
        clock = time.perf_counter
        for name, expr, deps in self.transforms:
            if changed is not None and not (deps & changed or name in changed):
                continue
            try:
                env[name] = out.outputs[name] = expr.evaluate(env)
            except EvaluationBudgetExceeded:
                raise
            except ExpressionError as exc:
                out.errors.append((f"transform {name}", exc))
            if clock() > deadline:
                raise self._over_budget(expr, deadline)
        if not self.rules:
            return out
        if changed is None:
            rules, touched = self.rules, set(self.defaults) | set(self.writers)
        else:
            # the rules reading a changed name, and (transitively) every rule
            # writing an output one of them writes: a later writer must still win
            frontier = [r for r in self.rules if r.deps & changed]
            ids = {r.id for r in frontier}
            touched = set()
            while frontier:
                for o in frontier.pop().outputs:
                    if o not in touched:
                        touched.add(o)
                        for w in self.writers.get(o, ()):
                            if w.id not in ids:
                                ids.add(w.id)
                                frontier.append(w)
            rules = [r for r in self.rules if r.id in ids]
        for name in touched:
            if name in self.defaults and name not in self.latched:
                out.outputs[name] = self.defaults[name]
        verdicts: list[tuple[_Rule, bool]] = []  # all conditions first: the budget may stop them
        for rule in rules:
            try:
                verdicts.append((rule, bool(rule.condition.evaluate(env))))
            except EvaluationBudgetExceeded:
                raise
            except ExpressionError as exc:
                out.errors.append((f"rule {rule.id}", exc))
            if clock() > deadline:
                raise self._over_budget(rule.condition, deadline)
        fired_outputs: set[str] = set()
        for rule, fire in verdicts:
            if not fire:
                if rule.id in self.firing:
                    self.firing.discard(rule.id)
                    for key in rule.actuators:
                        self.actuated.pop((rule.id, key), None)
                continue
            out.fired.append(rule.id)
            fired_outputs.update(rule.outputs)
            if rule.id not in self.firing:
                self.firing.add(rule.id)
                if rule.message:
                    stamp = datetime.datetime.now().strftime("%d/%m/%y %H:%M:%S")
                    out.messages.append((rule.id, f"{stamp} - {rule.message}", rule.message_pv))
            for name, value in rule.outputs.items():
                out.outputs[name] = value
                if (
                    name in self.latching
                    and name not in self.inhibit
                    and _latches(self.latching[name], value)
                ):
                    self.latched.add(name)
            for key, value in rule.actuators.items():
                if rule.level or self.actuated.get((rule.id, key), _UNSET) != value:
                    self.actuated[(rule.id, key)] = value
                    out.actuators.append((key, value))
        # An output released by CLEAR may latch again once no firing rule writes it.
        self.inhibit &= fired_outputs | (self.inhibit - touched)
        return out

    def clear(self) -> dict[str, Any]:
        """CLEAR: release the latched outputs; returns their default values to write."""
        released = {n: self.defaults[n] for n in self.latched if n in self.defaults}
        self.inhibit |= self.latched
        self.latched.clear()
        return released

    def reset(self) -> dict[str, Any]:
        """RESET: CLEAR, and forget which rules fired (messages and actuators start afresh)."""
        released = self.clear()
        self.firing.clear()
        self.actuated.clear()
        return released


_UNSET = object()


def _latches(direction: str, value: Any) -> bool:
    return direction == "any" or (bool(value) if direction == "rise" else not bool(value))


def _expand(names: Iterable[str], closure: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Names read, with transform results replaced by what they read and buffers by their PV."""
    out: set[str] = set()
    for n in names:
        if n in closure:
            out |= closure[n]
            out.add(n)
        else:
            out.add(n)
            if n.endswith(BUFFER_SUFFIX):
                out.add(n[: -len(BUFFER_SUFFIX)])
    return frozenset(out)
