"""Why a WebRTC session failed, as a bounded reason fit for a metric label."""

from __future__ import annotations


class WebRtcError(Exception):
    """A session that could not be set up or was lost.

    ``reason`` is one of a small fixed set: ``http_<status>``, ``bad_answer``, ``no_location``,
    ``refused``, ``dns``, ``tls``, ``reset``, ``too_many_redirects``, ``http_error``,
    ``timeout``, ``gather_timeout``, ``ice_failed``, ``ice_timeout``, ``dtls_failed``,
    ``dtls_timeout``, ``connection_lost``, ``media_stalled``, ``internal_error``. The message
    may say more but never reaches a label.
    """

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        # Seconds the server asked us to wait (Retry-After on a refused WHIP POST), if any.
        self.retry_after = retry_after
