"""The registry: the persisted desired state of the service.

One JSON file, ``<data>/registry.json``, holds every plugin (source,
commit, parameters, where its files are) and the generation that serves
it. Writes are atomic (temp file, fsync, rename, fsync of the directory),
so a kill -9 at any instant leaves either the old or the new state, never a
mix. The service rebuilds everything from this file at start.

Paths inside the data directory (clones, requirements) are written relative
to it and made absolute again when read (``version`` 2), so a data directory
restored at another path works as it is. A registry of version 1 (absolute
paths) still loads as it was; its next write makes the paths relative.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import storage_error

REGISTRY_FILE = "registry.json"


class Source(BaseModel):
    """Where a plugin comes from (never holds a token)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["git", "local"]
    url: str | None = None  # git URL without credentials
    branch: str | None = None
    path: str = ""
    commit: str | None = None
    local_path: str | None = None


class Entry(BaseModel):
    """One registered plugin."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["task", "job"]
    source: Source
    parameters: dict[str, Any] = Field(default_factory=dict)
    plugin_dir: str  # the directory holding config.yaml and the .py files
    owned_dir: str | None = None  # a clone we made and will delete on removal
    deps_dir: str | None = None  # requirements installed for this plugin only
    records: list[str] = Field(default_factory=list)  # planned record names
    added_at: float = Field(default_factory=time.time)
    auto_start: bool = True  # false: records built, the task not started (until a restart)
    auto_start_on_boot: bool = (
        True  # false: not started at a real start of the service (a reload keeps it)
    )
    autostart_order: int | None = None  # start order of a generation: lower first, None last
    class_name: str = ""  # the plugin's class, as validation found it
    #: why the watchdog stopped it (it held the event loop past the limit): it
    #: stays ``failed`` at every start until a restart on purpose or a change
    failed: str | None = None


#: 2: directories inside the data directory are written relative to it (1: as they were).
VERSION = 2


class State(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = VERSION
    generation: int = 1
    plugins: dict[str, Entry] = Field(default_factory=dict)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


#: The entry fields that name directories (relative to the data directory on disk when inside it).
PATH_FIELDS = ("plugin_dir", "owned_dir", "deps_dir")


class Registry:
    """Load/save the desired state; callers hold the service's lock around changes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / REGISTRY_FILE
        self.state = State()

    def load(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self.state = State()
            return self.state
        state = State.model_validate_json(raw)
        if state.version >= 2:  # version 1 held the paths as they were (absolute, mostly)
            state = self._paths(state, absolute=True)
        self.state = state.model_copy(update={"version": VERSION})
        return self.state

    def save(self) -> None:
        on_disk = self._paths(self.state, absolute=False)
        atomic_write(self.path, on_disk.model_dump_json(indent=2).encode())

    def _paths(self, state: State, *, absolute: bool) -> State:
        """``state`` with its directories absolute (as used) or, on disk, relative to the data
        directory when inside it (a ``local_path`` directory elsewhere stays absolute)."""
        bases = {self.data_dir.absolute(), self.data_dir.resolve()}
        changed = {}
        for name, e in state.plugins.items():
            update = {}
            for f in PATH_FIELDS:
                value = getattr(e, f)
                if value is None:
                    continue
                path = Path(value)
                if absolute and not path.is_absolute():
                    update[f] = str(self.data_dir.absolute() / path)
                elif not absolute:
                    path = path.absolute()  # a relative IOCMNG_PLUGINS_DIR made relative paths
                    inside = [b for b in bases if path.is_relative_to(b)]
                    if inside:
                        update[f] = str(path.relative_to(inside[0]))
            if update:
                changed[name] = e.model_copy(update=update)
        if not changed:
            return state
        return state.model_copy(update={"plugins": {**state.plugins, **changed}})

    @property
    def plugins(self) -> dict[str, Entry]:
        return self.state.plugins

    def commit(
        self,
        *,
        add: Entry | None = None,
        remove: str | None = None,
        bump: bool = False,
        generation: int | None = None,
    ) -> None:
        """Apply one change and persist it; ``bump`` moves to the next generation,
        ``generation`` sets it (back to the served one when every pending change is withdrawn)."""
        new = self.state.model_copy(deep=True)
        if add is not None:
            new.plugins[add.name] = add
        if remove is not None:
            new.plugins.pop(remove, None)
        if bump:
            new.generation += 1
        if generation is not None:
            new.generation = generation
        old, self.state = self.state, new
        try:
            self.save()
        except BaseException as exc:
            self.state = old
            storage = storage_error(exc, f"cannot write {self.path.name}")
            if storage is not None:
                raise storage from None
            raise
