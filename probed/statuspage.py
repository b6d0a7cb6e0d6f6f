"""The status page at / and the JSON API under /api/v1/, both read from each probe's ProbeStatus.

Server-rendered HTML with inline CSS and no script or external asset, so it works from a phone
on a VPN at 3 a.m. and in a locked-down browser. Every string that reaches the page is escaped:
probe names are checked by the config, but close reasons and error details come from the network.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from aiohttp import web

from probed import __version__
from probed.offloop import in_thread
from probed.status import Cycle, ProbeStatus

if TYPE_CHECKING:
    from probed.daemon import Daemon

NO_PROBES: Final = (
    "The config has no probes: nothing is being measured. Add entries under probes: and reload "
    "(SIGHUP or POST /-/reload)."
)
_REFRESH_S: Final = 10
# Cycles shown per probe on the page (failed ones first); the API has all that is kept. Keeps the
# page small and quick to render on the event loop with many probes.
PAGE_CYCLES: Final = 6
# Probes shown with their timelines (failing first); the rest link to a page of their own. With a
# thousand probes failing at once (a partition) the page stays small and renders in milliseconds.
PAGE_DETAILED: Final = 20

_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:8px;background:#f6f7f9;color:#1d2330}
h1{font-size:18px;margin:4px 0 8px}h1 small{font-weight:normal;color:#667}
nav a{margin-right:10px;color:#345}
.probe{background:#fff;border:1px solid #d8dce3;border-left:6px solid #9aa3b2;border-radius:6px;
padding:8px 10px;margin:10px 0}
.probe.ok{border-left-color:#2f9e44}.probe.failing{border-left-color:#d6336c;background:#fff5f7}
.head{display:flex;flex-wrap:wrap;gap:6px;align-items:baseline}
.name{font-weight:600;font-size:16px}.kind{color:#556;font-size:12px;border:1px solid #ccd;
border-radius:4px;padding:0 4px}
.state{font-weight:700;text-transform:uppercase;font-size:12px;padding:1px 6px;border-radius:4px;
background:#e9ecef}.state.ok{background:#d3f9d8;color:#2b8a3e}
.state.failing{background:#ffdeeb;color:#a61e4d}
.target{color:#556;font-family:ui-monospace,monospace;font-size:12px;word-break:break-all;
width:100%}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:6px 0}
dt{color:#667}dd{margin:0;word-break:break-word}
.bad{color:#c92a2a;font-weight:600}
details{margin-top:6px}summary{cursor:pointer;color:#345}
table{border-collapse:collapse;width:100%;font-size:12px;margin:4px 0}
td,th{text-align:left;padding:1px 6px 1px 0;vertical-align:top}
td.num{text-align:right;font-family:ui-monospace,monospace;white-space:nowrap}
tr.fail td{color:#c92a2a}
.cycle{border-top:1px solid #eee;padding-top:4px;margin-top:4px}
.cycle.fail>.ch{color:#c92a2a}
.empty{background:#fff3bf;border:1px solid #fcc419;border-radius:6px;padding:10px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{_age(now - at)} ago"


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%H:%M:%S", time.gmtime(at)) + "Z"


def _latency_text(status: ProbeStatus) -> str:
    cuts = status.percentiles()
    slo = status.slo[0] if status.slo else None
    if cuts is None:
        latest = status.recent.latest()
        return "no measurements yet" if latest is None else _ms(latest)
    p50, p99 = cuts
    text = f"p50 {_ms(p50)} · p99 {_ms(p99)}"
    if slo is not None:
        within = status.within_slo()
        over = ' class="bad"' if p99 > slo else ""
        text = (
            f"<span{over}>{_e(text)}</span> vs SLO {_e(_ms(slo))}"
            f" ({within:.0%} of the latest {len(status.recent)} within)"
            if within is not None
            else _e(text)
        )
        return text
    return _e(text)


def _event_text(event: Any, now: float) -> str:
    if event is None:
        return "-"
    parts = [event.what, event.reason]
    if event.detail:
        parts.append(event.detail)
    return f'<span class="bad">{_e(": ".join(parts))}</span> ({_e(_ago(event.at, now))})'


def _cycle_html(cycle: Cycle, now: float) -> str:
    if cycle.what == "check":
        head = f"check at {_clock(cycle.started)}: {'ok' if cycle.ok else cycle.end_reason}"
    elif cycle.ended is None:
        head = f"session open since {_clock(cycle.started)} ({_ago(cycle.started, now)})"
    elif cycle.what == "session":
        head = (
            f"session {_clock(cycle.started)} to {_clock(cycle.ended)}, ended: {cycle.end_reason}"
        )
        if cycle.close_code is not None:
            head += f" (close {cycle.close_code}"
            head += f" {cycle.close_reason!r})" if cycle.close_reason else ")"
    else:
        head = f"connect failed at {_clock(cycle.started)}: {cycle.end_reason}"
    if cycle.role:
        head = f"[{cycle.role}] {head}"
    head += f" · {cycle.measured} measured, {cycle.failures} failed"
    rows = "".join(
        f'<tr class="{"ok" if s.ok else "fail"}"><td class="num">+{s.offset_s * 1e3:.1f}ms</td>'
        f"<td>{_e(s.what)}</td><td class=num>{_e(_ms(s.latency_s) if s.latency_s else '')}</td>"
        f"<td>{_e(s.detail)}</td></tr>"
        for s in cycle.steps
    )
    css = "cycle" if cycle.ok else "cycle fail"
    return f'<div class="{css}"><div class="ch">{_e(head)}</div><table>{rows}</table></div>'


def probe_html(status: ProbeStatus, now: float, *, detailed: bool = True) -> str:
    """One probe's card; `detailed` adds its recent cycles, else a link to its own page."""
    cycles = status.cycles()
    failed = sum(not c.ok for c in cycles)
    if not detailed:
        link = f"/?probe={quote(status.name)}"
        return _probe_head(status, now) + (
            f'<p><a href="{_e(link)}">recent cycles ({len(cycles)}, {failed} failed)</a></p>'
            "</section>"
        )
    # The open session, then failures, then the rest: the failure that paged stays in view.
    shown = sorted(cycles, key=lambda c: (c.ended is not None, c.ok))[:PAGE_CYCLES]
    shown.sort(key=lambda c: c.started_mono, reverse=True)
    history = "".join(_cycle_html(c, now) for c in shown) or "<p>nothing yet</p>"
    if len(cycles) > len(shown):
        history += (
            f'<p><a href="/api/v1/probes/{_e(quote(status.name))}">all {len(cycles)} kept '
            "cycles (JSON)</a></p>"
        )
    return _probe_head(status, now) + (
        f"<details{' open' if status.state == 'failing' else ''}>"
        f"<summary>recent cycles ({len(cycles)}, {failed} failed)</summary>{history}</details>"
        "</section>"
    )


def _session_rows(status: ProbeStatus, loss: str) -> str:
    if status.sessionless:
        failed = f", {status.checks_failed} failed" if status.checks_failed else ""
        return f"<dt>checks</dt><dd>{status.checks} made{failed} (no held session)</dd>"
    age = f", for {_e(_age(status.session_age))}" if status.up else ""
    return (
        f"<dt>session</dt><dd>{'up' if status.up else 'down'}{age}"
        f" · {status.connects} connects</dd><dt>loss</dt><dd>{_e(loss)}</dd>"
    )


def _probe_head(status: ProbeStatus, now: float) -> str:
    """The card's heading and figures, up to its history."""
    state = status.state
    disconnects = (
        ", ".join(f"{reason} {count}" for reason, count in sorted(status.disconnects.items()))
        or "none"
    )
    loss = (
        f"{status.lost} of {status.sent} ({status.lost / status.sent:.2%})"
        if status.sent
        else "nothing sent yet"
    )
    reconnect = (
        f"{_ms(status.last_reconnect_s)} ({_ago(status.last_reconnect_at, now)})"
        if status.last_reconnect_s is not None
        else "none yet"
    )
    return (
        f'<section class="probe {_e(state)}" id="probe-{_e(status.name)}" '
        f'data-probe="{_e(status.name)}" data-state="{_e(state)}">'
        f'<div class="head"><span class="name">{_e(status.name)}</span>'
        f'<span class="kind">{_e(status.kind)}</span>'
        f'<span class="state {_e(state)}">{_e(state)}</span>'
        f'<span class="target">{_e(status.target)}</span></div><dl>'
        f"{_session_rows(status, loss)}"
        f"<dt>latency</dt><dd>{_latency_text(status)}</dd>"
        f"<dt>reconnect</dt><dd>{_e(reconnect)}</dd>"
        f"<dt>disconnects</dt><dd>{_e(disconnects)}</dd>"
        f"<dt>last error</dt><dd>{_event_text(status.last_error, now)}</dd>"
        f"<dt>last close</dt><dd>{_event_text(status.last_close, now)}</dd></dl>"
    )


def page_html(statuses: Iterable[ProbeStatus], *, configured: int, only: str | None = None) -> str:
    """The whole page; `only` narrows it to one probe (with its timeline, whatever the count)."""
    now = time.time()
    probes = sorted(statuses, key=lambda s: (s.state != "failing", s.name))
    failing = sum(s.state == "failing" for s in probes)
    summary = f"{len(probes)} probes, {failing} failing" if probes else "no probes"
    if configured == 0:
        body = f'<p class="empty" id="no-probes">{_e(NO_PROBES)}</p>'
    elif only is not None:
        chosen = [s for s in probes if s.name == only]
        body = '<p><a href="/">all probes</a></p>' + (
            probe_html(chosen[0], now) if chosen else f"<p>no probe named {_e(only)}</p>"
        )
    else:
        body = "".join(probe_html(s, now, detailed=i < PAGE_DETAILED) for i, s in enumerate(probes))
    return page_frame(summary, failing, body, now)


def page_frame(summary: str, failing: int, body: str, now: float) -> str:
    """The page around its probe cards (also for cards rendered by worker processes)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta http-equiv="refresh" content="{_REFRESH_S}">'
        f"<title>{'FAILING ' if failing else ''}probed: {_e(summary)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>probed <small>{_e(__version__)} · {_e(summary)} · {_e(_clock(now))}</small></h1>"
        '<nav><a href="/metrics">metrics</a><a href="/api/v1/probes">api</a>'
        '<a href="/-/healthy">healthy</a><a href="/-/ready">ready</a></nav>'
        f"{body}</body></html>"
    )


_DAEMON: web.AppKey[Daemon] = web.AppKey("statuspage.daemon")


def _statuses(daemon: Daemon) -> list[ProbeStatus]:
    return [p.status for p in daemon.exposition.probes()]


async def _index(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    text = page_html(
        _statuses(daemon), configured=len(daemon.config.probes), only=request.query.get("probe")
    )
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _probes(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    # Timelines only when asked: with many probes they are most of the bytes and the time.
    history = request.query.get("history", "0") not in ("0", "false")
    statuses = sorted(_statuses(daemon), key=lambda s: s.name)
    body: dict[str, Any] = {
        "version": __version__,
        "configured": len(daemon.config.probes),
        "warnings": [] if daemon.config.probes else [NO_PROBES],
        "probes": [s.as_dict(history=history) for s in statuses],
    }
    return await _json(body)


async def _json(body: object, status: int = 200) -> web.Response:
    # Serialising is CPU work that grows with the probe count: off the loop (the dicts are built
    # on it, so no probe is read while it changes).
    text = await in_thread(json.dumps, body)
    return web.Response(
        text=text,
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _probe(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for status in _statuses(request.app[_DAEMON]):
        if status.name == name:
            return await _json(status.as_dict())
    return await _json({"error": "no such probe", "probe": name}, status=404)


def add_routes(app: web.Application, daemon: Daemon) -> None:
    """/ (the status page; ?probe=NAME for one), /api/v1/probes (?history=1 for the timelines)
    and /api/v1/probes/{name} (with its timelines)."""
    app[_DAEMON] = daemon
    app.router.add_get("/", _index)
    app.router.add_get("/api/v1/probes", _probes)
    app.router.add_get("/api/v1/probes/{name}", _probe)
