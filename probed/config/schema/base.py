"""ProbeConfig: what every probe kind has, and all the daemon, CLI, demo and HTTP layer read."""

import re
from typing import Final

from pydantic import Field, field_validator

from probed.config.durations import Seconds
from probed.config.schema.strict import StrictModel
from probed.config.validation import _fail

_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
_NAME_RE: Final = re.compile(_NAME_PATTERN)


class ProbeConfig(StrictModel):
    """The common base of every probe kind's config.

    A kind subclasses it with `kind: Literal["<kind>"]` and its own fields, implements `target`
    and `slo_thresholds`, and is registered in probed/kinds.py.
    """

    kind: str
    name: str = Field(
        json_schema_extra={"pattern": _NAME_PATTERN},
        description="unique name; the probe label of every series (letters, digits, _ . : -)",
    )
    # How often the probe measures (a message, an utterance, a request); each kind says more.
    interval: Seconds = 1.0
    start_stagger: Seconds | None = Field(
        default=None,
        description="spread first starts over up to this long (default: interval, at most 1s)",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise _fail(
                "must be 1 to 63 letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
        return value

    @property
    def target(self) -> str:
        """Where the probe points, for labels and logs: never credentials or a query string."""
        raise NotImplementedError

    @property
    def adapter_label(self) -> str:
        """The `adapter` label of probe_info: which provider protocol (and mode) a probe speaks."""
        return ""

    @property
    def sessions(self) -> int:
        """Connections the probe holds at once (a fan-out kind: publisher plus subscribers).

        Summed over probes and bounded by the Config, so that `probed check` refuses a config
        that would run the daemon out of descriptors, not the daemon at 3 am.
        """
        return 1

    def slo_thresholds(self) -> tuple[float, ...]:
        """The probe's SLO thresholds; each becomes an exact bucket boundary of its histograms."""
        return ()

    @property
    def stagger(self) -> float:
        """Upper bound of the random delay before the probe first starts."""
        return self.start_stagger if self.start_stagger is not None else min(self.interval, 1.0)
