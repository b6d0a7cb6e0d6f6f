"""The `defaults:` block: values every probe inherits unless it sets its own.

Fifty probes against one service share their connection settings, headers and TLS; writing them
once keeps the file readable. Defaults are merged into each probe's raw data before validation
(mappings merge key by key, the probe's own value wins; anything else the probe's value replaces),
and only keys that the probe's kind has, so `message:` in defaults does not trouble an http
probe. Lines are carried over, so an error in an inherited value points at the defaults block.
"""

import copy
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel

from probed.config.validation import Loc

# Identity is never inherited.
_OWN: Final = frozenset({"name", "kind"})


def accepted_keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        keys.add(alias or field.alias or name)
    return keys - _OWN


def _merge(default: Any, own: Any) -> Any:
    if isinstance(default, dict) and isinstance(own, dict):
        merged = copy.deepcopy(default)
        for key, value in own.items():
            merged[key] = _merge(merged[key], value) if key in merged else value
        return merged
    return own


def _carry(lines: dict[Loc, int], src: Loc, dst: Loc) -> None:
    for loc, line in list(lines.items()):
        if loc[: len(src)] == src:
            lines.setdefault((*dst, *loc[len(src) :]), line)


def apply_defaults(
    data: dict[str, Any],
    kinds: Mapping[str, type[BaseModel]],
    lines: dict[Loc, int],
    from_env: list[Loc],
) -> None:
    """Merge `defaults:` into every probe of `data` in place."""
    defaults = data.get("defaults")
    probes = data.get("probes")
    if not isinstance(defaults, dict) or not defaults or not isinstance(probes, list):
        return
    for index, probe in enumerate(probes):
        if not isinstance(probe, dict):
            continue
        model = kinds.get(probe.get("kind"))  # type: ignore[arg-type]
        if model is None:
            continue  # the kind itself is reported
        accepted = accepted_keys(model)
        for key, value in defaults.items():
            if key not in accepted:
                continue
            probe[key] = _merge(value, probe[key]) if key in probe else copy.deepcopy(value)
            src, dst = ("defaults", key), ("probes", index, key)
            _carry(lines, src, dst)
            from_env.extend((*dst, *loc[len(src) :]) for loc in list(from_env) if loc[:2] == src)
