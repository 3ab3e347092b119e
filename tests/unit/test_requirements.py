"""A plugin's requirements.txt: package requirements only (issue 14, item 5)."""

from __future__ import annotations

import pytest

from iocmng.service.requirements import RequirementsError, parse_requirements


def test_specifiers_are_accepted() -> None:
    text = (
        "# deps\nnumpy>=1.24\n\nscipy[all] == 1.11.*  # pinned\nrequests; python_version >= '3.8'\n"
    )
    assert parse_requirements(text) == [
        "numpy>=1.24",
        "scipy[all]==1.11.*",
        'requests; python_version >= "3.8"',
    ]
    assert parse_requirements("# nothing\n\n") == []


@pytest.mark.parametrize(
    "line",
    [
        "-r /etc/hosts",
        "-c constraints.txt",
        "--requirement=other.txt",
        "-e git+file:///tmp/x#egg=x",
        "-i https://evil.example/simple",
        "--index-url https://evil.example/simple",
        "-f /tmp/wheels",
        "--extra-index-url=https://x",
        "pkg @ file:///tmp/pkg",
        "pkg @ https://example.invalid/pkg.whl",
        "./local/pkg",
        "/abs/path/pkg.whl",
        "https://example.invalid/pkg.tar.gz",
        "~/pkg",
        "numpy \\",
    ],
)
def test_options_urls_and_paths_are_refused_by_line_number(line: str) -> None:
    with pytest.raises(RequirementsError) as err:
        parse_requirements(f"numpy\n{line}\n")
    assert err.value.line == 2 and str(err.value).startswith("line 2:")
    secret_part = line.split()[-1]
    assert secret_part not in str(err.value), "the line's text is never echoed"
