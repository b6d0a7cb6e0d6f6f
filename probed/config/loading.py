"""parse_config() and load_config(): YAML text or file to a validated Config.

Loading is two-phased: the YAML is composed into a node tree (so every value's line is known,
duplicate keys can be caught and ``${VAR}`` can be expanded per scalar), converted to plain
Python data, and then validated by pydantic. Every problem found, in reading or in validation,
is reported at once, in file order.
"""

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import TypeAdapter, ValidationError

from probed.config.defaults import apply_defaults
from probed.config.errors import (
    ConfigError,
    ConfigIssue,
    _is_under,
    _line_of,
    _resolve,
    _validation_issues,
    _yaml_issue,
)
from probed.config.schema.probes import PROBE_KINDS, probe_union
from probed.config.schema.root import Config, config_model, duplicate_name_problems
from probed.config.validation import Loc, _format_path, _LoadContext
from probed.config.yaml_reader import BoundedLoader, _DocumentReader, flow_nesting_problem

# A 1,000-probe config is a few hundred KiB and 10,000 probes fit; a larger file is a mistake (or
# an attack) and would take many seconds and hundreds of MiB to parse.
MAX_CONFIG_BYTES: Final = 2 * 1024 * 1024


def _too_large(source: str) -> ConfigError:
    return ConfigError(
        [
            ConfigIssue(
                "",
                None,
                f"the config is larger than {MAX_CONFIG_BYTES // 2**20} MiB, the most probed "
                "reads (split it, or check that this is the right file)",
            )
        ],
        source,
    )


def parse_config(
    text: str,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
) -> Config:
    """Parse and validate a YAML config. Raises ConfigError listing every problem found.

    base_dir anchors relative file paths (load_config passes the config file's directory);
    without it they are relative to the working directory.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise _too_large(source)
    try:
        return _parse(text, source, env, base_dir)
    except ConfigError:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
        # No input may end in a traceback: whatever the reader missed is still a config error.
        raise ConfigError(
            [ConfigIssue("", None, f"the config cannot be read ({type(exc).__name__})")], source
        ) from None


def _parse(text: str, source: str, env: Mapping[str, str] | None, base_dir: Path | None) -> Config:
    flow = flow_nesting_problem(text)
    if flow is not None:
        raise ConfigError([ConfigIssue("", flow[0], f"invalid YAML: {flow[1]}")], source)
    try:
        root = yaml.compose(text, Loader=BoundedLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, text)], source) from None
    reader = _DocumentReader(os.environ if env is None else env)
    data = {} if root is None else reader.read(root)
    raw_issues = list(reader.issues)
    if data is None and not raw_issues:
        data = {}  # a file holding only comments or a bare "---"
    config: Config | None = None
    if isinstance(data, dict):
        apply_defaults(data, PROBE_KINDS, reader.lines, reader.from_env)
        try:
            config = _validate(data, _LoadContext(base_dir))
        except ValidationError as exc:
            found = list(_validation_issues(exc, reader))
            found += _masked_issues(exc, data, reader, base_dir)
            seen: set[tuple[Loc, str]] = set()
            for issue in found:
                key = (issue[0], issue[2])
                if key not in seen and not _is_under(issue[0], reader.failed):
                    seen.add(key)
                    raw_issues.append(issue)
    elif not raw_issues:
        line = root.start_mark.line + 1 if root is not None else None
        raw_issues.append(
            ((), line, "the config must be a mapping (with global: and probes: keys)")
        )
    if raw_issues or config is None:
        issues = [
            ConfigIssue(_format_path(loc), line, message) for loc, line, message in raw_issues
        ]
        # File order, the order an operator fixes them in.
        issues.sort(key=lambda issue: (issue.line is None, issue.line or 0))
        raise ConfigError(issues, source)
    return config


def _masked_issues(
    exc: ValidationError, data: dict[str, Any], reader: _DocumentReader, base_dir: Path | None
) -> list[tuple[Loc, int | None, str]]:
    """Cross-field problems that field errors hid, so that one `check` reports them all.

    pydantic runs a model's cross-field checks only once all its fields are valid. Unknown keys
    are the commonest field error and cannot change what the known keys mean, so validating again
    without them finds the cross-field problems they hid, without inventing any. Duplicate probe
    names are checked on the raw list, since any invalid probe hides the check on the whole file.
    """
    found: list[tuple[Loc, int | None, str]] = []
    unknown = [_resolve(tuple(e["loc"]))[0] for e in exc.errors() if e["type"] == "extra_forbidden"]
    if unknown:
        pruned = copy.deepcopy(data)
        for loc in unknown:
            _drop(pruned, loc)
        try:
            config_model().model_validate(
                pruned, by_alias=True, by_name=False, context=_LoadContext(base_dir)
            )
        except ValidationError as again:
            found.extend(_validation_issues(again, reader))
    probes = data.get("probes")
    if isinstance(probes, list):
        names = [p.get("name") if isinstance(p, dict) else None for p in probes]
        for loc, message in duplicate_name_problems(names):
            found.append((loc, _line_of(reader.lines, loc), message))
    return found


def _drop(data: Any, loc: Loc) -> None:
    for part in loc[:-1]:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_dict or in_list):
            return
        data = data[part]
    if isinstance(data, dict):
        data.pop(loc[-1], None)


_adapters: dict[tuple[type[Any], ...], TypeAdapter[Any]] = {}


def _validate(data: dict[str, Any], context: _LoadContext) -> Config:
    """Validate probe by probe, then the document around the validated probes.

    pydantic-core holds the GIL for the whole of one validation call: a 1,000-probe document
    validated in one call stalls the event loop for half a second even from a worker thread.
    One call per probe lets the loop run in between. A config with errors is validated again
    as a whole, so that every error is reported with its full path as before.
    """
    probes = data.get("probes")
    if isinstance(probes, list) and len(probes) > 1:
        key = tuple(PROBE_KINDS.values())
        adapter = _adapters.get(key)
        if adapter is None:
            adapter = _adapters[key] = TypeAdapter(probe_union())
        try:
            validated = [
                adapter.validate_python(p, by_alias=True, by_name=False, context=context)
                for p in probes
            ]
        except ValidationError:
            pass
        else:
            data = {**data, "probes": validated}
    return config_model().model_validate(data, by_alias=True, by_name=False, context=context)


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError, also when the file can't be read."""
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue("", None, f"cannot read the config file: {exc.strerror or exc}")], source
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise _too_large(source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigIssue("", line, "the file is not UTF-8 text")], source) from None
    return parse_config(text, source, env, base_dir=path.parent)
