"""The probed configuration: schema, YAML loading, durations, secrets and error reporting.

The schema is strict (unknown keys are errors) and every error names the YAML path and line,
because the people reading these errors are SREs staring at a 300-line file during an incident,
not Python developers.

Import from here; the modules are an implementation detail:

- durations.py: parse_duration, format_duration and the Seconds field type
- schema/: the pydantic models; common.py (StrictModel and shared pieces), base.py (ProbeConfig,
  what every kind has), endpoint.py (WebSocketEndpoint), one module per probe kind (echo.py),
  probes.py (the live map of registered kinds), root.py (Config, GlobalConfig, config_model)
- loading.py: parse_config and load_config
- yaml_reader.py: YAML node tree to plain data with lines, ${VAR} expansion, duplicate keys
- errors.py: ConfigError, ConfigIssue, and mapping pydantic errors back to YAML paths and lines
- validation.py: the load context and problem-carrying error shared by validators and loader
- json_schema.py: config_json_schema
"""

from probed.config.durations import DURATION_PATTERN, Seconds, format_duration, parse_duration
from probed.config.errors import ConfigError, ConfigIssue
from probed.config.json_schema import config_json_schema
from probed.config.loading import load_config, parse_config
from probed.config.schema.base import ProbeConfig
from probed.config.schema.common import (
    ConnectionConfig,
    KeepaliveConfig,
    ReadableFile,
    ReconnectConfig,
    SloConfig,
    TlsConfig,
)
from probed.config.schema.echo import MAX_IN_FLIGHT, EchoProbeConfig
from probed.config.schema.endpoint import WebSocketEndpoint, url_target
from probed.config.schema.probes import PROBE_KINDS
from probed.config.schema.root import Config, GlobalConfig
from probed.config.schema.root import split_listen as split_listen
from probed.config.schema.scripting import (
    ConditionConfig,
    FilterConfig,
    MatchConfig,
    MessageConfig,
    SetupStepConfig,
)
from probed.config.schema.strict import StrictModel
from probed.labels import RESERVED_LABEL_NAMES

__all__ = [
    "DURATION_PATTERN",
    "MAX_IN_FLIGHT",
    "PROBE_KINDS",
    "RESERVED_LABEL_NAMES",
    "ConditionConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConnectionConfig",
    "EchoProbeConfig",
    "FilterConfig",
    "GlobalConfig",
    "KeepaliveConfig",
    "MatchConfig",
    "MessageConfig",
    "ProbeConfig",
    "ReadableFile",
    "ReconnectConfig",
    "Seconds",
    "SetupStepConfig",
    "SloConfig",
    "StrictModel",
    "TlsConfig",
    "WebSocketEndpoint",
    "config_json_schema",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "url_target",
]

# The built-in kinds register their models here (probed/kinds.py imports only schema modules).
from probed import kinds as _kinds  # noqa: F401
