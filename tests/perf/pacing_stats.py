"""Pacing figures from recorded chunks: lateness per time bin, and drift per stream.

A schedule (one utterance: the pacer's origin `t0_ns`, its chunk period, and the instant each
chunk had been handed to the socket; chunk i is due at t0 + i * period) belongs to a stream (a
probe, which plays one utterance after another). Lateness is the send instant minus the chunk's
absolute deadline. Drift is judged two ways:
- per schedule, without trusting the pacer's arithmetic: the least-squares slope of (send instant
  - first send) - (audio sent since), against the audio sent. A pacer that computed each deadline
  from the previous send would accumulate its wake-up lateness and show a positive slope; one on
  absolute deadlines shows ~0;
- per stream, over the whole run: the slope of lateness against time across all its schedules,
  so that lateness that grows over the minutes (a leak, a heap that grows) shows as well.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class StreamRecord:
    stream: str
    t0_ns: int
    period_ns: int
    sent_ns: array[int] = field(default_factory=lambda: array("q"))


def _pct(values: npt.NDArray[np.float64], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _lateness_ms(stream: StreamRecord) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    sent = np.frombuffer(stream.sent_ns, dtype=np.int64)
    deadlines = stream.t0_ns + np.arange(len(sent), dtype=np.int64) * stream.period_ns
    return deadlines, (sent - deadlines) / 1e6


def summarise(
    streams: Sequence[StreamRecord], *, warmup_s: float, seconds: float, bin_s: float
) -> dict[str, Any]:
    """Chunks due in [first t0 + warmup, + seconds), in bins of `bin_s` by deadline."""
    streams = [s for s in streams if len(s.sent_ns)]
    if not streams:
        return {"streams": 0, "chunks": 0, "bins": [], "overall": {}, "drift": {}}
    start = min(s.t0_ns for s in streams) + int(warmup_s * 1e9)
    end = start + int(seconds * 1e9)
    bins = max(1, round(seconds / bin_s))
    per_bin: list[list[npt.NDArray[np.float64]]] = [[] for _ in range(bins)]
    kept: list[npt.NDArray[np.float64]] = []
    slopes: list[float] = []
    spans: list[float] = []
    per_stream: dict[str, tuple[list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]]]] = {}
    for record in streams:
        deadlines, late = _lateness_ms(record)
        inside = (deadlines >= start) & (deadlines < end)
        if inside.sum() < 2:
            continue
        d, lat = deadlines[inside], late[inside]
        kept.append(lat)
        index = np.minimum(((d - start) // int(bin_s * 1e9)).astype(np.int64), bins - 1)
        for b in np.unique(index):
            per_bin[int(b)].append(lat[index == b])
        times, lates = per_stream.setdefault(record.stream, ([], []))
        times.append((d - start) / 1e9)
        lates.append(lat)
        if d[-1] - d[0] < min(10.0, seconds / 2) * 1e9:
            continue  # too short to judge a slope
        # Independent of t0: the send instants against the nominal audio clock alone.
        sent = np.frombuffer(record.sent_ns, dtype=np.int64)[inside]
        audio_s = (d - d[0]) / 1e9
        offset_ms = (sent - sent[0]) / 1e6 - audio_s * 1e3
        slopes.append(float(np.polyfit(audio_s, offset_ms, 1)[0]) * 60)  # ms per minute
        # The plain figure: wall time between the first and last send, against the audio sent.
        spans.append(float(offset_ms[-1]))
    trends = [
        float(np.polyfit(np.concatenate(t), np.concatenate(v), 1)[0]) * 60
        for t, v in per_stream.values()
        if sum(len(x) for x in t) > 2
    ]
    everything = np.concatenate(kept) if kept else np.zeros(0)

    def row(values: npt.NDArray[np.float64]) -> dict[str, float]:
        return {
            "chunks": len(values),
            "p50_ms": _pct(values, 50),
            "p99_ms": _pct(values, 99),
            "p999_ms": _pct(values, 99.9),
            "max_ms": float(values.max()) if len(values) else float("nan"),
            "early": int((values < 0).sum()),
        }

    abs_slopes = np.abs(np.array(slopes))
    return {
        "streams": len(per_stream),
        "schedules": len(kept),
        "chunks": len(everything),
        "bin_s": bin_s,
        "bins": [
            {"bin": i, **row(np.concatenate(parts) if parts else np.zeros(0))}
            for i, parts in enumerate(per_bin)
        ],
        "overall": row(everything),
        "drift": {
            # Least-squares slope of (send - first send) - audio sent, per stream.
            "slope_ms_per_min_median": float(np.median(slopes)) if slopes else float("nan"),
            "slope_ms_per_min_max_abs": float(abs_slopes.max()) if slopes else float("nan"),
            # (last send - first send) - (audio between them): the whole run's accumulation.
            "wall_minus_audio_ms_median": float(np.median(spans)) if spans else float("nan"),
            "wall_minus_audio_ms_max_abs": float(np.abs(spans).max()) if spans else float("nan"),
            "schedules_judged": len(slopes),
            # Per stream, lateness against time over the whole run, across its schedules.
            "trend_ms_per_min_median": float(np.median(trends)) if trends else float("nan"),
            "trend_ms_per_min_max_abs": float(np.abs(trends).max()) if trends else float("nan"),
        },
    }
