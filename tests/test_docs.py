"""docs/configuration.md is what the schema says today, and says all of it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from probed import kinds
from probed.config import config_json_schema
from probed.config.reference import render_reference

DOC = Path(__file__).parent.parent / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    assert DOC.read_text() == render_reference(), (
        "docs/configuration.md is stale: python -m probed.config.reference > docs/configuration.md"
    )


def _keys(node: Any, defs: dict[str, Any]) -> set[str]:
    """Every property name anywhere in the schema."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            found.add(key)
            found |= _keys(value, defs)
        for key, value in node.items():
            if key != "properties":
                found |= _keys(value, defs)
    elif isinstance(node, list):
        for item in node:
            found |= _keys(item, defs)
    return found


def test_reference_lists_every_key_and_kind_with_working_links() -> None:
    text = render_reference()
    schema = config_json_schema()
    listed = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))
    assert _keys(schema, schema["$defs"]) - {"kind"} <= listed
    for kind in kinds.KINDS:
        assert f"## probes[] with kind: {kind}" in text
    anchors = {
        re.sub(r"[^a-z0-9_ -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    }
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, links - anchors
    # Every key says what it means (a description on its schema field).
    blank = re.findall(r"^\| `([^`]+)` \|.*\|  \|$", text, flags=re.MULTILINE)
    assert not blank, f"keys without a description in the schema: {blank}"
    # Durations read as written in a file, never as float seconds.
    assert "| `timeout` | duration | `5s` |" in text
