"""HTTP API probe: requests at a fixed interval on a kept-alive connection, timed to full response.

The realtime service's HTTP API sits beside its WebSocket (login, history, room lists); its
latency is part of what users feel. Requests leave on the open-loop schedule like echo messages; a
new connection's phases (dns, connect, first byte) are recorded as they happen, and errors get the
same bounded reasons as WebSocket connects.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from types import SimpleNamespace, UnionType
from typing import Final

import aiohttp
import structlog

from probed.config.schema.endpoint import proxy_credentials
from probed.config.schema.http import HttpProbeConfig
from probed.delivery import open_loop
from probed.dial import build_ssl_context
from probed.metrics import ProbeMetrics

RESULTS: Final = ("ok", "status", "body", "timeout", "error", "skipped")
_READ_LIMIT: Final = 8 << 20  # a body larger than this is read no further: still timed


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body to its end, or its first `limit` bytes (after decoding): one read returns only
    what has arrived, so a body in several pieces would be timed and checked by its first."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await stream.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


# Most specific first: proxy and TLS failures are also ClientConnectorErrors.
_REASONS: Final[tuple[tuple[type[BaseException] | UnionType, str], ...]] = (
    (aiohttp.ClientConnectorDNSError, "dns"),
    (aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError, "proxy"),
    (aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError, "tls"),
    (
        aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError | ConnectionResetError,
        "reset",
    ),
)


def classify(exc: BaseException) -> str:
    """A bounded connect-error reason for an aiohttp failure, as for WebSocket connects."""
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "unreachable"
    return "protocol_error"


class _Phases(SimpleNamespace):
    """One request's timeline, filled in by aiohttp's trace hooks (perf_counter seconds)."""

    start: float = 0.0
    dns: float | None = None
    connect: float | None = None
    first_byte: float | None = None
    new_connection: bool = False


def _trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    def hook(field: str, *, begin: bool = False) -> object:
        async def record(
            _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: object
        ) -> None:
            phases: _Phases = ctx.trace_request_ctx
            now = time.perf_counter()
            if begin:
                setattr(phases, f"_{field}_at", now)
            else:
                setattr(phases, field, now - getattr(phases, f"_{field}_at", phases.start))

        return record

    trace.on_dns_resolvehost_start.append(hook("dns", begin=True))  # type: ignore[arg-type]
    trace.on_dns_resolvehost_end.append(hook("dns"))  # type: ignore[arg-type]
    trace.on_connection_create_start.append(hook("connect", begin=True))  # type: ignore[arg-type]
    trace.on_connection_create_end.append(hook("connect"))  # type: ignore[arg-type]
    trace.on_request_headers_sent.append(hook("first_byte", begin=True))  # type: ignore[arg-type]
    trace.on_request_end.append(hook("first_byte"))  # type: ignore[arg-type]
    return trace


class HttpProbe:
    def __init__(
        self,
        cfg: HttpProbeConfig,
        metrics: ProbeMetrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._log = log
        metrics.status.sessionless = True
        self._duration = metrics.latency(
            "probe_http_duration_seconds", "HTTP API request to full response.", primary=True
        )
        self._results = metrics.counter(
            "probe_http_requests_total", "HTTP requests by result.", "result", RESULTS
        )
        self._headers = cfg.request_headers()
        self._secrets = tuple(v for v in self._headers.values() if len(v) >= 4)
        self._ssl = build_ssl_context(cfg.tls) if cfg.url.lower().startswith("https") else None
        proxy = cfg.proxy()
        creds = proxy_credentials(proxy) if proxy else None
        self._proxy = proxy
        self._proxy_auth = aiohttp.BasicAuth(*creds) if creds else None
        self._inflight = 0
        self._seq = 0

    def _client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl if self._ssl else True),
            trace_configs=[_trace()],
            timeout=aiohttp.ClientTimeout(total=self._cfg.timeout),
            auto_decompress=True,
        )

    async def run(self) -> None:
        async with self._client() as client, asyncio.TaskGroup() as tg:
            async for _slot in open_loop(self._cfg.interval):
                if self._inflight >= self._cfg.max_in_flight:
                    # The API is slower than timeout/interval allows: never pile up requests.
                    self._results.labels("skipped").inc()
                    continue
                tg.create_task(self.request(client))

    async def once(self) -> bool:
        async with self._client() as client:
            return await self.request(client)

    async def request(self, client: aiohttp.ClientSession) -> bool:
        cfg = self._cfg
        seq = self._seq
        self._seq += 1
        body = None
        if cfg.body is not None:
            body = (
                cfg.body.replace("{seq}", str(seq))
                .replace("{send_time}", f"{time.time():.6f}")
                .replace("{probe}", cfg.name)
            )
        phases = _Phases(start=time.perf_counter())
        self._inflight += 1
        start_ns = time.perf_counter_ns()
        try:
            async with client.request(
                cfg.method,
                cfg.url,
                headers=self._headers,
                data=body,
                allow_redirects=False,
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
                server_hostname=cfg.tls.server_name,
                trace_request_ctx=phases,
            ) as resp:
                content = await _read_bounded(resp.content, _READ_LIMIT)
                end_ns = time.perf_counter_ns()
                status = resp.status
        except TimeoutError:
            return self._failed("timeout", None, f"no full response within {cfg.timeout}s")
        except (aiohttp.ClientError, OSError) as exc:
            reason = classify(exc)
            return self._failed("error", reason, self._redact(str(exc) or type(exc).__name__))
        finally:
            self._inflight -= 1
        self._record_phases(phases)
        self._duration.observe(start_ns, end_ns)
        if status not in cfg.expect.status:
            return self._failed("status", f"http_{status}", f"status {status}", counted=False)
        wanted = cfg.expect.body_contains
        if wanted is not None and wanted.encode() not in content:
            return self._failed("body", None, "body does not contain the expected text")
        self._results.labels("ok").inc()
        self._metrics.set_success(True)
        new_connection = {
            name: seconds
            for name, seconds in (
                ("dns", phases.dns),
                ("connect", phases.connect),
                ("first_byte", phases.first_byte),
            )
            if seconds is not None and phases.connect is not None
        }
        self._metrics.status.checked(
            True,
            f"response {status}",
            " ".join(f"{k} {v * 1e3:.1f}ms" for k, v in new_connection.items()),
            latency_s=(end_ns - start_ns) / 1e9,
            phases=new_connection,
        )
        self._log.debug("response", status=status, ms=round((end_ns - start_ns) / 1e6, 3))
        return True

    def _record_phases(self, phases: _Phases) -> None:
        if phases.connect is None:
            return  # a kept-alive connection: nothing new to say about connecting
        recorded = {"dns": phases.dns, "connect": phases.connect, "first_byte": phases.first_byte}
        for name, seconds in recorded.items():
            if seconds is not None:
                self._metrics.phase.labels(name).set(seconds)

    def _failed(
        self, result: str, reason: str | None, detail: str, *, counted: bool = True
    ) -> bool:
        self._results.labels(result).inc()
        self._metrics.set_success(False)
        if reason is not None and counted:
            self._metrics.connect_failed(reason, detail)
        else:
            self._metrics.status.error("request failed", reason or result, detail)
            self._metrics.status.checked(False, f"request failed: {result}", detail)
        self._log.warning("request failed", result=result, reason=reason, detail=detail)
        return False

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text.replace(self._cfg.url, self._cfg.target)
