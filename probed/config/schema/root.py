"""The top of the config file: Config with its global: settings and probes: list."""

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final, Literal

from pydantic import Field, create_model, field_validator

from probed.config.defaults import accepted_keys
from probed.config.durations import Seconds
from probed.config.schema.base import ProbeConfig
from probed.config.schema.probes import PROBE_KINDS, probe_union
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem, _fail, _problems_error
from probed.labels import RESERVED_LABEL_NAMES

# Each session is a descriptor (two behind a proxy) and some memory; past these a config is a
# mistake or needs more than one probed.
MAX_SESSIONS_PER_PROBE: Final = 1_000
MAX_SESSIONS: Final = 10_000
_LABEL_NAME_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_HOSTNAME_RE: Final = re.compile(
    r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
)


def split_listen(value: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" / ":port"; raises ValueError with an SRE-facing reason."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError("must be [ipv6-address]:port")
        try:
            IPv6Address(host)
        except ValueError:
            raise ValueError("has an invalid IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464 or [::1]:9464")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets, e.g. [::1]:9464")
        if host and not _HOSTNAME_RE.fullmatch(host):
            try:
                IPv4Address(host)
            except ValueError:
                raise ValueError("has an invalid host") from None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError("needs a port between 0 and 65535")
    return host, int(port_text)


class GlobalConfig(StrictModel):
    listen: str = Field(
        default="127.0.0.1:9464",
        description="HTTP address for /metrics, the status page and the API: host:port, "
        "[v6]:port or :port (all interfaces); --listen overrides it",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={"propertyNames": {"pattern": f"^{_LABEL_NAME_RE.pattern}$"}},
        description="static labels added to every series, e.g. {location: eu-west-1}",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="--log-level overrides it"
    )
    # A measurement taken while the event loop lagged more than this is tainted: kept out of the
    # latency histograms so a starved process raises a self-health alert, not a false SLO page.
    loop_lag_threshold: Seconds = Field(
        default=0.005,
        description="a measurement taken while the event loop lagged more is tainted: counted "
        "in probe_measurements_tainted_total, kept out of the latency histograms. Independent "
        "of any SLO: a few ms, the most a kept measurement may be inflated by (or 1% of it, "
        "if more: below what the histograms resolve)",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        try:
            split_listen(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[Problem] = []
        for name, label_value in value.items():
            if not _LABEL_NAME_RE.fullmatch(name):
                problems.append(((name,), "label names must match [a-zA-Z_][a-zA-Z0-9_]*"))
            elif name.startswith("__"):
                problems.append(
                    ((name,), "label names starting with __ are reserved by Prometheus")
                )
            elif name in ("job", "instance"):
                problems.append(
                    ((name,), "is set by Prometheus on scrape (yours would become exported_*)")
                )
            elif name in RESERVED_LABEL_NAMES:
                problems.append(((name,), "is a label probed sets itself; pick another name"))
            if not label_value:
                # Prometheus treats an empty label as absent: most likely an unset variable.
                problems.append(((name,), "label value must not be empty"))
        if problems:
            raise _problems_error(problems)
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        """(host, port) to bind; host has no brackets and is "" for all interfaces."""
        return split_listen(self.listen)


class Config(StrictModel):
    # Not `alias`: type checkers would then want Config(global=...), which is not valid Python.
    global_: GlobalConfig = Field(
        default_factory=GlobalConfig,
        validation_alias="global",
        serialization_alias="global",
        description="settings of the daemon itself",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="values every probe inherits unless it sets its own (mappings merge)",
    )
    probes: list[ProbeConfig] = Field(
        default_factory=list, description="what to measure; one entry per probe, by kind"
    )

    def _semantic_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        known = set().union(*(accepted_keys(m) for m in PROBE_KINDS.values()))
        for key in self.defaults:
            if key not in known:
                problems.append(
                    (("defaults", key), "no probe kind has this key (or it cannot be inherited)")
                )
        problems += duplicate_name_problems([probe.name for probe in self.probes])
        for index, probe in enumerate(self.probes):
            if probe.sessions > MAX_SESSIONS_PER_PROBE:
                problems.append(
                    (
                        ("probes", index),
                        f"holds {probe.sessions} sessions; at most {MAX_SESSIONS_PER_PROBE} "
                        "per probe",
                    )
                )
        total = self.sessions
        if total > MAX_SESSIONS:
            problems.append(
                (
                    ("probes",),
                    f"{total} sessions in all; one probed holds at most {MAX_SESSIONS} "
                    "(split the probes over several)",
                )
            )
        return problems

    @property
    def sessions(self) -> int:
        """Sessions every probe together holds: each is at least one file descriptor."""
        return sum(probe.sessions for probe in self.probes)


def duplicate_name_problems(names: Sequence[object]) -> list[Problem]:
    """Probes sharing a name; also run by the loader on raw data when a probe is invalid."""
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in first:
            problems.append(
                (
                    ("probes", index, "name"),
                    f'duplicate probe name "{name}" (first used by probes[{first[name]}])',
                )
            )
        first.setdefault(name, index)
    return problems


_models: dict[tuple[type[ProbeConfig], ...], type[Config]] = {}


def config_model() -> type[Config]:
    """Config with `probes:` validated as the union of every registered kind.

    Kinds register in probed/kinds.py (a test may register its own), so the model is derived
    from the registry when asked for, and cached per set of kinds.
    """
    key = tuple(PROBE_KINDS.values())
    model = _models.get(key)
    if model is None:
        probes = Config.model_fields["probes"]
        fields: Any = {
            "probes": (
                list[probe_union()],  # type: ignore[misc]
                Field(default_factory=list, description=probes.description),
            )
        }
        model = _models[key] = create_model("Config", __base__=Config, **fields)
    return model
