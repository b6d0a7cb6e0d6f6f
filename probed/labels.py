"""Label names probed sets on its own series: the one list the config checks global labels against.

Kept apart from metrics.py so that loading a config never imports prometheus_client.
"""

from typing import Final

# Every label name a metric of ours carries (plus Prometheus's own le and quantile): a global
# static label with one of these names would clash, so the config refuses them.
RESERVED_LABEL_NAMES: Final = frozenset(
    {"probe", "kind", "target", "adapter", "reason", "code", "phase", "result", "role"}
    | {"version", "python_version", "event_loop", "le", "quantile"}
)
