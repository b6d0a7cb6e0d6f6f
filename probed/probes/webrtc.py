"""WebRTC audio probe: a held aiortc session over WHIP, measured the way a caller hears it.

Each session is set up in phases (gather, signaling, ice, dtls) and then held: a known signal
leaves every `interval` and its echo is timed where its packets arrive (probed/webrtc), so the
round trip holds none of our own receive buffering; that buffering (what a plain aiortc client
would add) is exported beside it. RTCP gives the network round trip per report, jitter in
seconds and cumulative loss, which becomes counter increments per session so that a new session
(whose streams count from zero again) never makes the counter go backwards.

Failures use the daemon's bounded vocabulary. Connect errors keep the WebRTC reason (http_503,
bad_answer, ice_failed, dtls_failed, refused, ...). A held session that is lost ends as
``stalled`` (no media from the far end for `media_timeout`), ``reset`` (the peer connection
failed or the far end closed it) or ``error``; either way the probe reconnects with the same
backoff policy as WebSocket sessions.

This module imports aiortc: the kind registry imports it only when a webrtc probe is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Final

import aiohttp
import structlog
from aiortc import RTCIceServer

from probed.config.schema.webrtc import WebRtcProbeConfig
from probed.connection import Backoff
from probed.dial import build_ssl_context
from probed.metrics import SEND_LAG_BUCKETS, ProbeMetrics
from probed.series import Counter
from probed.webrtc import EchoMeasurement, EchoOutcome, RtcpStats, WebRtcError, WebRtcSession

RESULTS: Final = tuple(outcome.value for outcome in EchoOutcome)
DIRECTIONS: Final = ("inbound", "outbound")
# Created at zero beside the shared reasons, so that alerts see them before the first failure.
CONNECT_REASONS: Final = (
    "ice_failed",
    "ice_timeout",
    "dtls_failed",
    "dtls_timeout",
    "bad_answer",
    "no_location",
    "gather_timeout",
)
# How a held session was lost, in the disconnect vocabulary every kind shares.
_LOST: Final = {"media_stalled": "stalled", "connection_lost": "reset"}
# A probe being stopped (reload, SIGTERM) does not wait longer than this for the WHIP DELETE.
_SHUTDOWN_CLOSE: Final = 3.0


class _Loss:
    """RTCP's cumulative packets-lost figures as increments of one counter.

    The figure can fall (duplicates are subtracted from it), so only a new high-water mark
    counts; a new session's streams start from zero again, and so does the mark.
    """

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._high: dict[str, int] = {}

    def new_session(self) -> None:
        self._high.clear()

    def update(self, direction: str, cumulative: int | None) -> None:
        if cumulative is None:
            return
        high = self._high.get(direction, 0)
        if cumulative > high:
            self._counter.labels(direction).inc(cumulative - high)
            self._high[direction] = cumulative


class WebRtcProbe:
    def __init__(
        self,
        cfg: WebRtcProbeConfig,
        metrics: ProbeMetrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._log = log
        self._session_metrics = metrics.session()
        self._backoff = Backoff(cfg.reconnect)
        self._roundtrip = metrics.latency(
            "probe_webrtc_audio_roundtrip_seconds",
            "Known audio signal sent until its echo's packets arrived (no client buffering).",
            primary=True,
        )
        # Not taint-checked: aiortc's own set-up work (keys, DTLS) is what lags the loop here, and
        # probe_connect_duration_seconds, which holds the same figure, is not either.
        self._setup = metrics.histogram(
            "probe_webrtc_setup_seconds",
            "WebRTC session set-up: offer to connected.",
            metrics.buckets,
        )
        self._rtt = metrics.latency(
            "probe_webrtc_rtt_seconds", "Network round trip from each RTCP report on our stream."
        )
        self._buffering = metrics.histogram(
            "probe_webrtc_client_buffering_seconds",
            "What the probe's own receive path (jitter buffer, decoder) adds to a round trip; "
            "not part of probe_webrtc_audio_roundtrip_seconds.",
            metrics.buckets,
        )
        self._echoes = metrics.counter(
            "probe_webrtc_echoes_total", "Known signals sent, by what came back.", "result", RESULTS
        )
        self._jitter = metrics.gauge(
            "probe_webrtc_jitter_seconds",
            "RTP interarrival jitter in seconds: inbound as we receive the far end's audio, "
            "outbound as the far end reports receiving ours.",
            "direction",
        )
        self._loss = _Loss(
            metrics.counter(
                "probe_webrtc_packets_lost_total",
                "RTP packets lost: inbound as we count them, outbound as the far end reports.",
                "direction",
                DIRECTIONS,
            )
        )
        self._send_lag = metrics.histogram(
            "probe_audio_send_lag_seconds",
            "How late audio chunks left against their real-time schedule.",
            SEND_LAG_BUCKETS,
        )
        for reason in CONNECT_REASONS:
            metrics.connect_errors.labels(reason)
        # WebRTC has no close codes: an empty WebSocket family would only puzzle a reader.
        with contextlib.suppress(KeyError):  # already gone: the probe was built again
            metrics.registry.unregister(metrics.sessions.close_codes)
        self._headers = cfg.request_headers()
        self._secrets = tuple(v for v in self._headers.values() if len(v) >= 4)
        self._ice_servers = [
            RTCIceServer(
                urls=server.urls,
                username=server.username,
                credential=server.credential.get_secret_value() if server.credential else None,
            )
            for server in cfg.ice_servers
        ]

    # -- the held session ---------------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        loss_ns: int | None = None
        async with self._client() as http:
            while True:
                session = self._new_session(http)
                try:
                    phases = await session.connect()
                except Exception as exc:
                    error = self._classify(exc)
                    attempt += 1
                    # A refusing endpoint's Retry-After is honoured, as for WebSocket dials.
                    delay = self._backoff.delay(attempt, error.retry_after)
                    self._session_metrics.connect_failed(error.reason, self._redact(str(error)))
                    self._log.warning(
                        "connect failed",
                        reason=error.reason,
                        detail=self._redact(str(error)),
                        retry_in_s=round(delay, 3),
                        attempt=attempt,
                    )
                    await asyncio.sleep(delay)
                    continue
                started_ns = time.perf_counter_ns()
                reconnect = None if loss_ns is None else (started_ns - loss_ns) / 1e9
                self._connected(session, phases.total, dataclasses.asdict(phases), reconnect)
                reason, ended_ns = await self._hold(session)
                lived = (ended_ns - started_ns) / 1e9
                attempt = (
                    0
                    if lived >= self._cfg.reconnect.reset_after or reason == "churn"
                    else (attempt + 1)
                )
                delay = 0.0 if reason == "churn" else self._backoff.delay(attempt)
                loss_ns = ended_ns
                self._log.info(
                    "session down", reason=reason, lived_s=round(lived, 3), reconnect_in_s=delay
                )
                if delay:
                    await asyncio.sleep(delay)

    def _connected(
        self,
        session: WebRtcSession,
        total: float,
        phases: dict[str, float],
        reconnect: float | None,
    ) -> None:
        steps = {k: v for k, v in phases.items() if k != "total"}
        self._setup.observe(total)
        self._session_metrics.connected_ok(
            phases=steps, total=total, reconnect=reconnect, cert_expiry=None
        )
        self._loss.new_session()
        if not session.echoing:
            # A plain ingest sends nothing back: up and reporting RTCP is all it can promise.
            self._metrics.set_success(True)
        self._log.info(
            "session up",
            echoing=session.echoing,
            setup_ms=round(total * 1e3, 2),
            **{f"{k}_ms": round(v * 1e3, 2) for k, v in steps.items()},
            reconnect_s=None if reconnect is None else round(reconnect, 3),
        )

    async def _hold(self, session: WebRtcSession) -> tuple[str, int]:
        """Measure until the session is lost, churned or the probe stopped: (reason, ended)."""
        tasks: dict[asyncio.Task[object], str] = {
            asyncio.create_task(session.wait_failed()): "failed",
            asyncio.create_task(self._measure(session)): "measure",
            asyncio.create_task(self._poll_stats(session)): "stats",
        }
        if self._cfg.churn is not None:
            tasks[asyncio.create_task(asyncio.sleep(self._cfg.churn))] = "churn"
        reason = "shutdown"
        ended_ns = time.perf_counter_ns()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            ended_ns = time.perf_counter_ns()
            reason = self._why(session, done, tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SHUTDOWN_CLOSE if reason == "shutdown" else None):
                    await session.close()
            # Jitter is a property of a live stream: no stale figure while the probe is down.
            self._jitter.clear()
            self._session_metrics.disconnected(
                reason, None, self._redact(str(session.failure or ""))
            )
        return reason, ended_ns

    def _why(
        self,
        session: WebRtcSession,
        done: set[asyncio.Task[object]],
        tasks: dict[asyncio.Task[object], str],
    ) -> str:
        failure = session.failure
        if failure is not None:
            return _LOST.get(failure.reason, "error")
        for task in done:
            if tasks[task] == "churn":
                return "churn"
            exc = task.exception()
            if exc is not None:
                # A bug of ours or a peer that made us trip: this session ends, the probe goes on.
                self._log.error("measurement failed; session ends", exc_info=exc)
        return "error"

    async def _measure(self, session: WebRtcSession) -> None:
        # echoes() ends (or raises) only once the session has failed, which _why() reads.
        with contextlib.suppress(WebRtcError):
            async for measurement in session.echoes():
                self._record_echo(measurement)

    def _record_echo(self, m: EchoMeasurement) -> None:
        self._echoes.labels(m.outcome.value).inc()
        status = self._metrics.status
        status.sent += 1
        detail = f"signal {m.signal_id}, correlation {float(m.correlation):.2f}"
        if m.outcome is EchoOutcome.OK and m.arrived_ns is not None:
            kept = self._roundtrip.observe(m.sent_ns, m.arrived_ns)
            buffering = m.client_buffering
            if kept and buffering is not None:
                self._buffering.observe(max(buffering, 0.0))
            if buffering is not None:
                detail += f", client buffering {buffering * 1e3:.1f}ms"
            status.measured("echo", (m.arrived_ns - m.sent_ns) / 1e9, detail)
            self._metrics.set_success(True)
            return
        status.lost += 1
        status.failed(f"echo: {m.outcome.value}", detail)
        self._metrics.set_success(False)
        self._log.info("echo missing", result=m.outcome.value, detail=detail)

    async def _poll_stats(self, session: WebRtcSession) -> None:
        while True:
            await asyncio.sleep(self._cfg.interval)
            try:
                stats = await session.stats()
            except Exception as exc:
                # aiortc's report is a convenience; the session's health is judged elsewhere.
                self._log.debug("no RTCP statistics", error=type(exc).__name__)
                continue
            self._record_stats(stats)

    def _record_stats(self, stats: RtcpStats) -> None:
        if stats.inbound_jitter is not None:
            self._jitter.labels("inbound").set(stats.inbound_jitter)
        if stats.jitter is not None:
            self._jitter.labels("outbound").set(stats.jitter)
        self._loss.update("inbound", stats.inbound_packets_lost)
        self._loss.update("outbound", stats.packets_lost)

    def _on_rtt(self, seconds: float) -> None:
        # Called as the report arrives: the interval it covers ends now.
        end = time.perf_counter_ns()
        self._rtt.observe(end - round(seconds * 1e9), end)

    # -- building blocks ----------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        """The WHIP signalling client: configured headers (and bearer token) on every request."""
        cfg = self._cfg
        tls = build_ssl_context(cfg.tls) if cfg.url.lower().startswith("https") else True
        return aiohttp.ClientSession(headers=self._headers, connector=aiohttp.TCPConnector(ssl=tls))

    def _new_session(self, http: aiohttp.ClientSession) -> WebRtcSession:
        cfg = self._cfg
        lag: Callable[[float], None] = self._send_lag.observe
        return WebRtcSession(
            cfg.url,
            ice_servers=self._ice_servers,
            signal_interval=cfg.interval,
            echo_window=cfg.timeout,
            gate=cfg.min_correlation,
            connect_timeout=cfg.connect_timeout,
            request_timeout=cfg.request_timeout,
            media_timeout=cfg.media_timeout,
            codecs=cfg.codec_mime_types,
            http=http,
            on_send_lateness=lag,
            on_rtt=self._on_rtt,
        )

    def _classify(self, exc: Exception) -> WebRtcError:
        if isinstance(exc, WebRtcError):
            return exc
        # Not the far end's doing as far as we can tell: counted, logged with its traceback.
        self._log.error("connect raised unexpectedly", exc_info=exc)
        return WebRtcError("internal_error", type(exc).__name__)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text.replace(self._cfg.url, self._cfg.target)

    # -- one-shot -----------------------------------------------------------------------------

    async def once(self) -> bool:
        """Connect, wait for one echo (or, from a plain ingest, RTCP), close.

        Feeds the probe's status like a held session does, so `probed once` prints the same
        timeline the status page shows.
        """
        status = self._metrics.status
        async with self._client() as http:
            session = self._new_session(http)
            try:
                phases = await session.connect()
            except WebRtcError as exc:
                detail = self._redact(str(exc))
                self._log.error("connect failed", reason=exc.reason, detail=detail)
                status.error("connect failed", exc.reason, detail)
                status.connect_failed(exc.reason, detail)
                self._metrics.set_success(False)
                return False
            steps = {k: v for k, v in dataclasses.asdict(phases).items() if k != "total"}
            status.session_up(steps)
            self._log.info("connected", echoing=session.echoing, **_ms_fields(steps))
            ok = False
            try:
                ok = await self._one_echo(session) if session.echoing else True
                stats = await self._first_rtcp(session)
                status.note("rtcp", _rtcp_text(stats))
                self._log.info("rtcp", detail=_rtcp_text(stats))
                self._metrics.set_success(ok)
                return ok
            finally:
                await session.close()
                if session.delete_result is not None:
                    self._log.warning("WHIP DELETE failed", reason=session.delete_result)
                status.session_down("done", None, "", failure=not ok)

    async def _first_rtcp(self, session: WebRtcSession) -> RtcpStats:
        """The statistics once the far end has reported on our stream (up to 2 s: reports go
        out every 0.5 to 1.5 s), or as they are."""
        stats = await session.stats()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while stats.rtt is None and session.failure is None:
                    await asyncio.sleep(0.1)
                    stats = await session.stats()
        return stats

    async def _one_echo(self, session: WebRtcSession) -> bool:
        # The first signal leaves within one interval; its echo is decided a timeout later.
        limit = 2 * self._cfg.interval + self._cfg.timeout + 2.0
        status = self._metrics.status
        try:
            async with asyncio.timeout(limit):
                async for m in session.echoes():
                    self._record_echo(m)
                    return m.outcome is EchoOutcome.OK
        except TimeoutError:
            status.failed("no echo measured", f"within {limit:.1f}s")
        except WebRtcError as exc:
            status.failed("session lost", exc.reason)
        return False


def _ms_fields(seconds: dict[str, float]) -> dict[str, float]:
    return {f"{k}_ms": round(v * 1e3, 2) for k, v in seconds.items()}


def _rtcp_text(stats: RtcpStats) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.1f}ms"

    return (
        f"rtt {ms(stats.rtt)}, jitter in {ms(stats.inbound_jitter)} out {ms(stats.jitter)}, "
        f"lost in {stats.inbound_packets_lost} out {stats.packets_lost}, "
        f"packets sent {stats.packets_sent} received {stats.inbound_packets_received}"
    )
