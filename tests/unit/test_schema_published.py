"""docs/config.schema.json is the JSON schema of config.yaml generated from the models.

The published file is what users point their editors at; it must not drift
from :func:`iocmng.config.models.json_schema` (the models in ``iocmng/config/models.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from iocmng.config.models import json_schema

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "config.schema.json"
REGENERATE = "regenerate it with: iocmng schema > docs/config.schema.json"


def test_published_schema_matches_the_models() -> None:
    assert PUBLISHED.is_file(), f"{PUBLISHED} is missing; {REGENERATE}"
    published = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    assert published == json_schema(), (
        f"{PUBLISHED.name} differs from the config.yaml models; {REGENERATE}"
    )


def test_published_schema_is_the_schema_command_output() -> None:
    """Byte for byte what `iocmng schema` prints (2-space indent, final newline)."""
    expected = json.dumps(json_schema(), indent=2) + "\n"
    assert PUBLISHED.read_text(encoding="utf-8") == expected, (
        f"{PUBLISHED.name} is not formatted like `iocmng schema` output; {REGENERATE}"
    )


def test_published_schema_describes_every_field() -> None:
    """Every property carries a description (the docstrings flow into the schema)."""
    schema = json_schema()
    missing = []
    for where, node in [("PluginConfig", schema), *schema.get("$defs", {}).items()]:
        for prop, spec in node.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{where}.{prop}")
    assert not missing, f"fields without a description: {', '.join(missing)}"
