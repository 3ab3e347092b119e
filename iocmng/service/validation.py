"""The validation pipeline (SPEC §7): every step awaited before anything registers.

::

    clone → dependencies → config → syntax → import → inheritance → abstract → pvs → logic

Each step reports ok/failed with its detail; the first failure stops the
pipeline and removes what it made (clone, installed requirements). The
import, inheritance and abstract steps run in a child process with a
timeout, so a module that hangs, crashes, calls ``os._exit`` or pollutes
``sys.modules`` cannot hurt the service.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import json
import logging
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.models import CONFIG_NAMES, TASK_MODES, PluginConfig, load_config, merged_parameters
from ..epics.plan import RecordPlan, plan
from ..errors import ConfigError, InsufficientStorage, IocmngError, ValidationFailed, storage_error
from ..runtime.loader import plugin_files
from . import bounded
from .registry import Source
from .requirements import RequirementsError, parse_requirements
from .sources import check_subpath, clone, local_commit, resolve_inside

log = logging.getLogger("iocmng.validation")


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Request:
    """What to validate: the fields of an add request."""

    name: str
    git_url: str | None = None
    local_path: str | None = None
    pat: str | None = None
    branch: str | None = None
    path: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    expect_kind: str | None = None  # "task", "job" or None (either)
    # Registered with the plugin (not validated): see the registry's Entry.
    auto_start: bool = True
    auto_start_on_boot: bool = True
    autostart_order: int | None = None


@dataclass
class Candidate:
    """A validated plugin, ready to be committed to the registry."""

    request: Request
    source: Source
    plugin_dir: Path
    owned_dir: Path | None = None
    deps_dir: Path | None = None
    config: PluginConfig | None = None
    kind: str = ""
    mode: str = ""
    class_name: str = ""
    records: list[str] = field(default_factory=list)  # plan.names, as the registry keeps them
    #: The record plan (base, mode, merged parameters, records), from the pvs step on.
    plan: RecordPlan | None = None
    #: What the import check's child process reported (stage, class, kind, functions): this
    #: candidate's own, so adds validated at the same time never see each other's.
    child: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    def discard(self) -> None:
        """Remove everything this candidate created (a refused add leaves nothing)."""
        for d in (self.owned_dir, self.deps_dir):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)


@dataclass
class Options:
    data_dir: Path
    prefix: str
    allow_requirements: bool = True
    git_timeout: float = 120.0
    pip_timeout: float = 300.0
    import_timeout: float = 30.0


class _StepFailed(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Pipeline:
    """Runs the steps in order; ``run`` returns a Candidate or raises ValidationFailed."""

    def __init__(self, options: Options) -> None:
        self.opt = options
        self.steps: list[tuple[str, Callable[[Candidate], Awaitable[str]]]] = [
            ("clone", self.step_clone),
            ("dependencies", self.step_dependencies),
            ("config", self.step_config),
            ("syntax", self.step_syntax),
            ("import", self.step_import),
            ("inheritance", self.step_inheritance),
            ("abstract", self.step_abstract),
            ("pvs", self.step_pvs),
            ("logic", self.step_logic),
        ]

    async def run(self, req: Request) -> Candidate:
        cand = Candidate(req, Source(type="git" if req.git_url else "local"), Path("."))
        storage = None
        for name, step in self.steps:
            t0 = time.monotonic()
            try:
                detail = await step(cand)
            except _StepFailed as exc:
                cand.steps.append(Step(name, False, exc.detail, time.monotonic() - t0))
                break
            except IocmngError as exc:
                cand.steps.append(Step(name, False, exc.detail, time.monotonic() - t0))
                break
            except Exception as exc:  # a bug of ours must still not leave files behind
                storage = storage_error(exc, f"{name}: cannot write")
                if storage is not None:  # a full or read-only data directory is not a bug
                    cand.steps.append(Step(name, False, storage.detail, time.monotonic() - t0))
                    # dulwich leaves the lock file it was writing open when the disk is full,
                    # reachable only from the failed call's frames: clear them, so the file
                    # closes now instead of whenever the cycle they sit in is collected.
                    traceback.clear_frames(exc.__traceback__)
                    break
                log.exception("validation step %s crashed", name)
                cand.steps.append(
                    Step(
                        name,
                        False,
                        f"internal error: {type(exc).__name__}: {exc}",
                        time.monotonic() - t0,
                    )
                )
                break
            cand.steps.append(Step(name, True, detail, time.monotonic() - t0))
        else:
            return cand
        await asyncio.to_thread(cand.discard)
        failed = cand.steps[-1]
        if storage is not None:
            # And collect what the cleared frames still sat in: the fd of a deleted
            # lock file would keep its space used and the file system busy.
            gc.collect()
            raise InsufficientStorage(failed.detail, steps=[s.to_dict() for s in cand.steps])
        detail = f"{failed.name}: {failed.detail}"
        # iocmng 2.7.9's report beside the steps: its clients show .validation.errors
        legacy = {
            "ok": False,
            "class_name": cand.class_name or None,
            "plugin_type": cand.kind or None,
            "errors": [detail],
        }
        raise ValidationFailed(detail, steps=[s.to_dict() for s in cand.steps], validation=legacy)

    async def check_code(
        self, name: str, plugin_dir: Path, deps_dir: Path | None, kind: str
    ) -> None:
        """Re-check code already registered (before a live restart re-imports it in-process)."""
        cand = Candidate(
            Request(name=name, expect_kind=kind),
            Source(type="local"),
            plugin_dir,
            deps_dir=deps_dir,
        )
        for step in (self.step_syntax, self.step_import, self.step_inheritance, self.step_abstract):
            try:
                await step(cand)
            except _StepFailed as exc:
                raise ValidationFailed(
                    f"{step.__name__.removeprefix('step_')}: {exc.detail}"
                ) from None

    # -- steps --------------------------------------------------------------------------
    async def step_clone(self, c: Candidate) -> str:
        req = c.request
        sub = check_subpath(req.path)
        if req.git_url:
            dest = self.opt.data_dir / "repos" / f"{req.name}-{uuid.uuid4().hex[:8]}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            c.owned_dir = dest
            result = await clone(req.git_url, dest, req.branch, req.pat, self.opt.git_timeout)
            c.source = Source(
                type="git",
                url=req.git_url,
                branch=req.branch,
                path=str(sub) if req.path else "",
                commit=result.commit,
            )
            root = dest
            detail = (
                f"cloned {req.git_url}"
                + (f" @ {req.branch}" if req.branch else "")
                + f" at {result.commit[:12]}"
            )
        else:
            assert req.local_path is not None
            root = Path(req.local_path)
            if not root.is_absolute():
                raise _StepFailed(f"local_path {req.local_path!r} must be absolute")
            if not root.is_dir():
                raise _StepFailed(f"local_path {req.local_path!r} is not a directory")
            commit = await asyncio.to_thread(local_commit, root)
            c.source = Source(
                type="local", local_path=str(root), path=str(sub) if req.path else "", commit=commit
            )
            detail = f"using {root}"
        plugin_dir = resolve_inside(root, sub)
        if not plugin_dir.is_dir():
            raise _StepFailed(f"path {req.path!r} is not a directory in the repository")
        c.plugin_dir = plugin_dir
        return detail

    async def step_dependencies(self, c: Candidate) -> str:
        root = c.owned_dir or Path(c.source.local_path or c.plugin_dir)
        req_file = next(
            (
                p
                for p in (c.plugin_dir / "requirements.txt", root / "requirements.txt")
                if p.is_file()
            ),
            None,
        )
        if req_file is None:
            return "no requirements.txt"
        if not req_file.resolve().is_relative_to(root.resolve()):  # a symlink out of the clone
            raise _StepFailed(f"{req_file.name} leads outside the repository")
        try:
            wanted = parse_requirements(req_file.read_text(encoding="utf-8", errors="replace"))
        except RequirementsError as exc:
            raise _StepFailed(f"{req_file.name} {exc}") from None
        if not wanted:
            return f"{req_file.name}: nothing to install"
        if not self.opt.allow_requirements:
            raise _StepFailed(
                f"{req_file.name} asks for packages, but this service refuses requirements "
                "(IOCMNG_ALLOW_REQUIREMENTS=false); vendor them into the plugin or ask the operator"
            )
        target = self.opt.data_dir / "deps" / f"{c.request.name}-{uuid.uuid4().hex[:8]}"
        target.mkdir(parents=True)
        c.deps_dir = target
        # pip gets the checked specifiers only, from a file of ours, --isolated
        # (no pip.conf, no PIP_* variables), working inside the deps directory.
        # --target: a directory of the plugin's own, appended to sys.path after
        # the service's packages, so nothing the service imports is replaced.
        wanted_file = target / ".requirements.txt"
        wanted_file.write_text("\n".join(wanted) + "\n", encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--target",
            str(target),
            "--src",
            str(target / ".src"),
            "-r",
            str(wanted_file),
        ]
        done = await bounded.run(cmd, self.opt.pip_timeout, cwd=target, merge_stderr=True)
        if done.timed_out:
            raise _StepFailed(
                f"installing {req_file.name} took longer than {self.opt.pip_timeout:.0f}s"
            )
        if done.returncode != 0:
            tail = done.stdout.decode(errors="replace").strip().splitlines()[-3:]
            raise _StepFailed(f"pip could not install {req_file.name}: {' | '.join(tail)}")
        return f"installed {req_file.name} into the plugin's own directory"

    def _inside_source(self, c: Candidate, files: list[Path]) -> None:
        """Every file the plugin is made of resolves inside its clone (or local directory):
        a symlink to a file elsewhere on the server is refused, naming the link only."""
        root = (c.owned_dir or Path(c.source.local_path or c.plugin_dir)).resolve()
        for f in files:
            if f.exists() and not f.resolve().is_relative_to(root):
                raise _StepFailed(
                    f"{f.name} leads outside the repository (a symlink?); plugin files must be in it"
                )

    async def step_config(self, c: Candidate) -> str:
        self._inside_source(c, [c.plugin_dir / n for n in CONFIG_NAMES])
        try:
            c.config = load_config(c.plugin_dir)
        except ConfigError as exc:
            # Name the file as the user knows it (inside their repository), not by
            # the path of our temporary clone, which is deleted with the refusal.
            if c.owned_dir is not None and Path(exc.file).is_relative_to(c.owned_dir):
                raise ConfigError(
                    Path(exc.file).relative_to(c.owned_dir).as_posix(), exc.errors
                ) from None
            raise
        params = merged_parameters(c.config, c.request.parameters)
        c.mode = params.mode
        n = len(c.config.pvs.inputs) + len(c.config.pvs.outputs)
        return f"{n} PV(s) declared, mode {params.mode}"

    async def step_syntax(self, c: Candidate) -> str:
        files = plugin_files(c.plugin_dir)
        self._inside_source(c, files)
        if not files:
            if c.config is not None and c.config.has_logic:
                return "no .py file: a declarative task (config.yaml only)"
            raise _StepFailed(
                "no .py file in the plugin directory (files starting with '_' are ignored); a plugin "
                "of config.yaml alone (declarative) must declare links, rules or transforms"
            )

        def check() -> None:
            for f in files:
                try:
                    ast.parse(f.read_bytes(), filename=f.name)
                except SyntaxError as exc:
                    raise _StepFailed(f"{f.name}, line {exc.lineno}: {exc.msg}") from None

        await asyncio.to_thread(check)
        return f"{len(files)} file(s) parse"

    async def step_import(self, c: Candidate) -> str:
        if not plugin_files(c.plugin_dir):  # declarative: nothing of the plugin's to import
            c.child = {"stage": "ok", "class": "DeclarativeTask", "kind": "task", "functions": []}
            return "declarative task: no module to import"
        extra = [str(c.deps_dir)] if c.deps_dir else []
        cmd = [
            sys.executable,
            "-c",
            "from iocmng.service.validation import child_check; child_check()",
            str(c.plugin_dir),
            c.request.name,
            *extra,
        ]
        done = await bounded.run(cmd, self.opt.import_timeout)  # own process group, output capped
        if done.timed_out:
            raise _StepFailed(
                f"importing the plugin did not finish within {self.opt.import_timeout:.0f}s "
                "(does a module block or loop at import time?)"
            )
        out, err = done.stdout, done.stderr
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            c.child = json.loads(lines[-1]) if lines else {}
        except ValueError:
            c.child = {}
        if "stage" not in c.child:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise _StepFailed(
                f"the import exited with code {done.returncode} before reporting "
                f"(does a module call sys.exit/os._exit or crash?) {tail[0]}".strip()
            )
        if c.child["stage"] == "import":
            raise _StepFailed(c.child["error"])
        return f"{len(plugin_files(c.plugin_dir))} module(s) imported in a child process"

    async def step_inheritance(self, c: Candidate) -> str:
        if c.child.get("stage") == "inheritance":
            raise _StepFailed(c.child["error"])
        if c.child.get("stage") == "abstract":
            return "one plugin class found (it is not complete: see the next step)"
        c.kind, c.class_name = c.child.get("kind", ""), c.child.get("class", "")
        want = c.request.expect_kind
        if want and c.kind and want != c.kind:
            raise _StepFailed(
                f"{c.class_name} is a {c.kind}, not a {want}; add it with POST /api/v1/{c.kind}s "
                "(or /api/v1/plugins)"
            )
        if c.kind == "task" and c.mode == "job":
            raise _StepFailed(
                f"config.yaml parameters.mode is 'job', but {c.class_name} is a task; use one of "
                + ", ".join(TASK_MODES)
            )
        return f"{c.class_name} is a {c.kind}"

    async def step_abstract(self, c: Candidate) -> str:
        if c.child.get("stage") == "abstract":
            raise _StepFailed(c.child["error"])
        return "all abstract methods implemented"

    async def step_pvs(self, c: Candidate) -> str:
        assert c.config is not None
        c.plan = plan(self.opt.prefix, c.request.name, c.kind, c.config, c.request.parameters)
        c.records = list(c.plan.names)
        return f"{len(c.records)} record(s) under {c.plan.base}:"

    async def step_logic(self, c: Candidate) -> str:
        """Rules and transforms: every expression parsed and name-checked now, not at run time."""
        from ..declarative.logic import Logic

        assert c.config is not None
        cfg = c.config
        if not (cfg.rules or cfg.transforms):
            return "no rules or transforms"
        if c.kind == "job":
            raise _StepFailed(
                "rules and transforms need a task (mode continuous, triggered or reactive), "
                f"but {c.class_name} is a job"
            )
        assert c.plan is not None
        params = c.plan.parameters_dict()  # as the runtime compiles them
        # The plugin's own functions are known by name here (the code ran in the child).
        functions = {f: _placeholder for f in c.child.get("functions", [])}
        try:
            Logic(cfg, params, functions)
        except ConfigError as exc:
            raise ConfigError(self._config_file(c), exc.errors) from None
        return f"{len(cfg.rules)} rule(s), {len(cfg.transforms)} transform(s) compiled"

    @staticmethod
    def _config_file(c: Candidate) -> str:
        file = c.plugin_dir / "config.yaml"
        return file.relative_to(c.owned_dir).as_posix() if c.owned_dir is not None else str(file)


def _placeholder(*args: Any) -> Any:
    return None


def child_check() -> None:
    """Entry point of the child process: import the plugin and print one JSON line."""
    from ..runtime.loader import choose_class, import_files, kind_of

    directory, name, *extra = sys.argv[1:]
    result: dict[str, Any]
    try:
        cls = choose_class(import_files(Path(directory), name, [Path(e) for e in extra]))
        functions = getattr(cls, "expression_functions", None) or {}
        result = {
            "stage": "ok",
            "class": cls.__name__,
            "kind": kind_of(cls),
            "functions": sorted(str(f) for f in functions),
        }
    except IocmngError as exc:
        result = {"stage": getattr(exc, "step", "import"), "error": exc.detail}
    except BaseException as exc:
        result = {"stage": "import", "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
