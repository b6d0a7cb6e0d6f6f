"""What `probed once` prints: a timeline per probe and a summary table, or one JSON document.

Read from the same ProbeStatus the status page shows, so a debug run and the page tell the same
story in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from probed.status import ProbeStatus


@dataclass(frozen=True)
class OnceResult:
    status: ProbeStatus
    ok: bool

    @property
    def connect_s(self) -> float | None:
        for cycle in self.status.cycles():
            if cycle.phases:
                # Setting up the connection only: an HTTP check's first_byte is the request.
                return sum(v for k, v in cycle.phases.items() if k != "first_byte")
        return None

    @property
    def latency_s(self) -> float | None:
        return self.status.recent.latest()

    @property
    def why(self) -> str:
        """The first thing that went wrong, in a line; "" when all went well."""
        if self.ok:
            return ""
        for cycle in self.status.cycles():
            if cycle.close_code is not None:
                reason = f" {cycle.close_reason!r}" if cycle.close_reason else ""
                return f"server closed the session: {cycle.close_code}{reason}"
            failed = [s for s in cycle.steps if not s.ok]
            if failed:
                first = failed[0]
                return f"{first.what}: {first.detail}" if first.detail else first.what
        error = self.status.last_error
        return f"{error.what}: {error.reason}" if error else "failed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "connect_s": self.connect_s,
            "latency_s": self.latency_s,
            "why": self.why or None,
            **self.status.as_dict(),
        }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}ms"


def timeline(result: OnceResult) -> str:
    s = result.status
    lines = [f"{s.name}  ({s.kind})  {s.target}"]
    for cycle in reversed(s.cycles()):
        for step in cycle.steps:
            mark = " " if step.ok else "!"
            latency = _ms(step.latency_s) if step.latency_s is not None else ""
            lines.append(
                f"  {mark} {f'+{step.offset_s * 1e3:.1f}ms':>10}  {step.what:<28} {latency:>9}  "
                f"{step.detail}".rstrip()
            )
    verdict = "OK" if result.ok else f"FAILED: {result.why}"
    lines.append(f"  = {verdict}")
    return "\n".join(lines)


def summary_table(results: list[OnceResult]) -> str:
    rows = [("probe", "kind", "result", "connect", "latency", "SLO", "detail")]
    for r in results:
        s = r.status
        rows.append(
            (
                s.name,
                s.kind,
                "ok" if r.ok else "FAILED",
                _ms(r.connect_s),
                _ms(r.latency_s),
                _ms(s.slo[0] if s.slo else None),
                r.why or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    )


def report(results: list[OnceResult]) -> str:
    passed = sum(r.ok for r in results)
    parts = [timeline(r) for r in results]
    parts.append(summary_table(results))
    parts.append(f"{passed} of {len(results)} probe(s) passed")
    return "\n\n".join(parts)


def report_json(results: list[OnceResult]) -> dict[str, Any]:
    return {"ok": all(r.ok for r in results), "probes": [r.as_dict() for r in results]}
