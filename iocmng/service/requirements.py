"""A plugin's ``requirements.txt``, read as package requirements only (pure, no I/O).

pip reads far more than package names from such a file: ``-r``/``-c`` name
other files (anywhere on the machine), ``-e`` checks out a repository,
``-i``/``--index-url``/``-f`` change where packages come from, and a line
may be a URL or a path. None of that belongs in a plugin: each line must be
a requirement specifier (PEP 508: a name, extras, version specifiers,
markers; no ``name @ url``), parsed with ``packaging`` (PyPA's own parser,
the one pip vendors). A refused line is named by its number only: its
text is never echoed back (it could be a path the caller hopes we read).

The accepted specifiers are what pip then installs, from a file written in
the plugin's own deps directory, so pip never reads the plugin's file.
"""

from __future__ import annotations

from packaging.requirements import InvalidRequirement, Requirement

REFUSED = (
    "only package requirements (a name, extras, version specifiers, markers) are accepted; "
    "pip options (-r, -c, -e, -i, --index-url, -f...), URLs and paths are refused"
)


class RequirementsError(ValueError):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line


def parse_requirements(text: str) -> list[str]:
    """The requirement specifiers of ``text``, normalized; raises RequirementsError naming the line."""
    out: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-") or line.endswith("\\"):
            raise RequirementsError(number, REFUSED)
        try:
            req = Requirement(line)
        except InvalidRequirement:
            raise RequirementsError(number, f"not a requirement specifier; {REFUSED}") from None
        if req.url is not None:
            raise RequirementsError(number, REFUSED)
        out.append(str(req))
    return out
