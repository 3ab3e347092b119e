"""Plugin sources: dulwich clones of git repositories, and local paths.

The personal access token (``pat``) is handed to dulwich as the https
password for the one clone and goes nowhere else: the URL stored in the
clone's ``.git/config``, the registry, logs, errors and responses never
carry it. Every message that might quote a URL goes through :func:`redact`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import STORAGE_ERRNOS, BadRequest, InvalidRequest, SourceError

log = logging.getLogger("iocmng.sources")
T = TypeVar("T")

SCHEMES = ("https", "http", "file")


@dataclass(frozen=True)
class CloneResult:
    commit: str
    branch: str | None


def strip_credentials(url: str) -> str:
    """The URL without any ``user:password@`` part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def redact(text: str, *secrets: str | None) -> str:
    """Remove secrets and URL credentials from a message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def check_git_url(url: str, pat: str | None) -> str:
    """Validate a git URL; return it without credentials. Raises InvalidRequest (422)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise InvalidRequest(
            f"git_url: scheme {parts.scheme or '(none)'!r} is not accepted; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES),
            field="git_url",
        )
    if parts.scheme == "file":
        if not parts.path:
            raise InvalidRequest("git_url: a file:// URL needs a path", field="git_url")
    elif not parts.hostname:
        raise InvalidRequest("git_url: the URL has no host", field="git_url")
    if pat and parts.scheme != "https":
        raise InvalidRequest(
            "pat: a token is sent only over https://; use an https git_url", field="pat"
        )
    if parts.password:
        raise InvalidRequest(
            "git_url: do not put credentials in the URL; pass the token as 'pat'", field="git_url"
        )
    return strip_credentials(url)


def check_subpath(path: str) -> PurePosixPath:
    """Validate a ``path`` inside a clone: relative, no ``..``. Raises InvalidRequest (422)."""
    p = PurePosixPath(path.replace("\\", "/")) if path else PurePosixPath(".")
    if p.is_absolute() or path.startswith("~"):
        raise InvalidRequest(
            f"path: {path!r} must be relative to the repository root", field="path"
        )
    if any(part == ".." for part in p.parts):
        raise InvalidRequest(
            f"path: {path!r} must stay inside the repository (no '..')", field="path"
        )
    return p


def resolve_inside(root: Path, sub: PurePosixPath) -> Path:
    """``root/sub`` resolved, refusing anything (e.g. a symlink) that leaves ``root``."""
    root = root.resolve()
    target = (root / sub).resolve()
    if not target.is_relative_to(root):
        raise BadRequest(f"path: {str(sub)!r} leads outside the repository", field="path")
    return target


def _clone_sync(url: str, dest: Path, branch: str | None, pat: str | None) -> CloneResult:
    from dulwich import porcelain

    kwargs: dict[str, Any] = {}
    if pat:
        kwargs = {"username": "oauth2", "password": pat}
    err = io.BytesIO()
    try:
        try:
            repo = porcelain.clone(
                url, str(dest), depth=1, branch=branch, checkout=True, errstream=err, **kwargs
            )
        except Exception as exc:  # some transports (e.g. dumb http) cannot do shallow
            if "shallow" not in str(exc).lower() and "depth" not in str(exc).lower():
                raise
            shutil.rmtree(dest, ignore_errors=True)
            repo = porcelain.clone(
                url, str(dest), branch=branch, checkout=True, errstream=err, **kwargs
            )
        with repo:
            commit = repo.head().decode()
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            raise  # the data directory, not the source: InsufficientStorage upstream
        text = str(exc) or type(exc).__name__
        if branch and (branch in text or "not found" in text.lower() or isinstance(exc, KeyError)):
            raise SourceError(
                f"branch {branch!r} does not exist in {strip_credentials(url)}"
            ) from None
        raise SourceError(redact(f"cannot clone {strip_credentials(url)}: {text}", pat)) from None
    return CloneResult(commit=commit, branch=branch)


#: Threads of their own for git network I/O (a clone may take minutes): it never holds
#: the loop's default executor, which serves quick file work (config reads, autosave).
_GIT_POOL: ThreadPoolExecutor | None = None


def _in_git_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    global _GIT_POOL
    if _GIT_POOL is None:
        _GIT_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="iocmng-git")
    return asyncio.get_running_loop().run_in_executor(_GIT_POOL, fn, *args)


async def clone(
    url: str, dest: Path, branch: str | None, pat: str | None, timeout: float
) -> CloneResult:
    """Clone ``url`` into ``dest`` in a thread, within ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(_in_git_thread(_clone_sync, url, dest, branch, pat), timeout)
    except TimeoutError:
        raise SourceError(
            f"cloning {strip_credentials(url)} took longer than {timeout:.0f}s"
        ) from None


def _remote_head_sync(url: str, branch: str | None, pat: str | None) -> str | None:
    from dulwich import porcelain

    kwargs: dict[str, Any] = {"username": "oauth2", "password": pat} if pat else {}
    result: Any = porcelain.ls_remote(url, **kwargs)
    refs: dict[bytes, bytes] = getattr(result, "refs", result)  # dulwich < 0.23 returned the dict
    if branch is None:
        names = [b"HEAD"]
    else:
        b = branch.encode()
        names = [b"refs/heads/" + b, b"refs/tags/" + b + b"^{}", b"refs/tags/" + b]
    for name in names:
        if refs.get(name):
            return refs[name].decode()
    return None


async def remote_head(url: str, branch: str | None, pat: str | None, timeout: float) -> str | None:
    """The commit ``branch`` (or HEAD) points to in the repository at ``url``, without
    cloning it; None if the repository has no such ref. Raises SourceError (token
    redacted) if the repository cannot be reached or refuses within ``timeout``."""
    try:
        return await asyncio.wait_for(_in_git_thread(_remote_head_sync, url, branch, pat), timeout)
    except TimeoutError:
        raise SourceError(
            f"asking {strip_credentials(url)} for its commits took longer than {timeout:.0f}s"
        ) from None
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        raise SourceError(redact(f"cannot reach {strip_credentials(url)}: {text}", pat)) from None


def local_commit(directory: Path) -> str | None:
    """The HEAD commit of the git repository containing ``directory``, if any."""
    from dulwich.repo import Repo

    for d in [directory, *directory.parents]:
        if (d / ".git").exists():
            try:
                with Repo(str(d)) as repo:
                    return repo.head().decode()
            except Exception:
                return None
    return None
