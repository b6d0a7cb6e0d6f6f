"""WHIP (RFC 9725) signalling over aiohttp: POST the offer, keep the session URL, DELETE it.

Non-trickle only: aiortc gathers every candidate inside setLocalDescription, so the offer that is
posted is complete and no PATCH is ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from yarl import URL

from probed.dial import parse_retry_after
from probed.webrtc.errors import WebRtcError

SDP = "application/sdp"
# An audio answer with a full candidate list is a few KiB; a larger body is not an answer and
# must not be buffered whole (a hostile or broken server could send gigabytes).
MAX_ANSWER_BYTES = 256 * 1024


@dataclass(frozen=True)
class WhipAnswer:
    sdp: str
    session_url: str  # the Location, resolved against the URL that answered (after redirects)
    etag: str | None


def _headers(token: str | None, content_type: str | None = None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def _http_status_reason(status: int) -> str:
    # Statuses outside the registered range are folded so a hostile server cannot mint labels.
    return f"http_{status}" if 100 <= status <= 599 else "http_invalid"


# Most specific first: aiohttp's connector errors subclass one another.
_CLIENT_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timeout"),
    (aiohttp.ClientConnectorDNSError, "dns"),
    (aiohttp.ClientSSLError, "tls"),
    (aiohttp.ClientConnectorError, "refused"),
    (aiohttp.TooManyRedirects, "too_many_redirects"),
    (aiohttp.ServerDisconnectedError, "reset"),
    (aiohttp.ClientOSError, "reset"),
)


def classify_client_error(exc: BaseException) -> WebRtcError:
    """Map an aiohttp/asyncio failure of a WHIP request onto a bounded reason."""
    if isinstance(exc, WebRtcError):
        return exc
    for kind, reason in _CLIENT_ERRORS:
        if isinstance(exc, kind):
            return WebRtcError(reason, type(exc).__name__)
    return WebRtcError("http_error", type(exc).__name__)


def looks_like_sdp(text: str) -> bool:
    # The full parse happens in setRemoteDescription; this catches an HTML error page early.
    return text.startswith("v=0") and "\nm=" in text


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise WebRtcError("bad_answer", f"response body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def post_offer(
    http: aiohttp.ClientSession,
    endpoint: str,
    offer_sdp: str,
    *,
    token: str | None,
) -> WhipAnswer:
    """POST the offer; 201 with an SDP answer and a Location, or a classified WebRtcError.

    aiohttp follows 307/308 redirects with the method and body intact, as WHIP requires. The
    caller bounds the request with asyncio.timeout (a TimeoutError is reason ``timeout``).
    """
    try:
        async with http.post(
            endpoint, data=offer_sdp.encode(), headers=_headers(token, SDP)
        ) as resp:
            body = await _read_limited(resp, MAX_ANSWER_BYTES)
            status, location = resp.status, resp.headers.get("Location")
            content_type, answered_url = resp.content_type, resp.url
            etag = resp.headers.get("ETag")
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    except (aiohttp.ClientError, ValueError) as exc:
        raise classify_client_error(exc) from exc
    if status != 201:
        raise WebRtcError(_http_status_reason(status), "WHIP POST not created", retry_after)
    if not location:
        raise WebRtcError("no_location", "201 without a Location header")
    if content_type != SDP:
        raise WebRtcError("bad_answer", f"answer content type {content_type!r}")
    text = body.decode(errors="replace")
    if not looks_like_sdp(text):
        raise WebRtcError("bad_answer", "answer is not an SDP document")
    return WhipAnswer(text, str(answered_url.join(URL(location))), etag)


async def delete_session(
    http: aiohttp.ClientSession, session_url: str, *, token: str | None
) -> str | None:
    """DELETE the WHIP session; None when the server acknowledged it, else a bounded reason.

    The caller bounds it with asyncio.timeout.
    """
    try:
        async with http.delete(session_url, headers=_headers(token)) as resp:
            status = resp.status  # the body is not read: leaving the block discards it
    except (aiohttp.ClientError, ValueError) as exc:
        return classify_client_error(exc).reason
    return None if 200 <= status < 300 else _http_status_reason(status)
