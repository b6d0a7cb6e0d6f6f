"""Scrubbing strings that came from the network before anyone sees them.

A hostile or careless server can reflect what we sent it (an Authorization header in a close
reason, a header value quoted back in a handshake error). Every such string goes through a
`Redactor` built from everything secret in the probe's config before it is logged, shown on the
status page or kept in a status event; it is also cut to a bounded length and stripped of control
characters, so a far end can neither forge log lines nor fill the journal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit

REDACTED: Final = "<redacted>"
# Long enough for any close reason (123 bytes) or a library's error message; longer is noise.
MAX_TEXT: Final = 240
# Shorter values match too much ordinary text to be worth blanking out (and are weak secrets).
_MIN_SECRET: Final = 4
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _forms(value: str) -> Iterable[str]:
    """A secret as written and as a server may quote it back."""
    yield value
    # "Bearer abc", "Basic abc", "Token abc": the credential on its own.
    _scheme, sep, credential = value.partition(" ")
    if sep:
        yield credential.strip()
    yield quote(value, safe="")


class Redactor:
    """Blanks out every configured secret in a string, in each form it is likely to come back."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {form for value in secrets for form in _forms(value) if len(form) >= _MIN_SECRET}
        # Longest first, so that a secret containing another is blanked out whole.
        self._secrets = tuple(sorted(found, key=len, reverse=True))

    @classmethod
    def for_endpoint(cls, headers: Iterable[str], url: str, proxy: str | None) -> Redactor:
        """Secrets of one endpoint: handshake header values, URL userinfo and query values, the
        proxy's credentials."""
        values = list(headers)
        for text in (url, proxy or ""):
            if not text:
                continue
            try:
                parts = urlsplit(text)
                values.extend(v for v in (parts.username, parts.password) if v)
                values.extend(v for _k, v in parse_qsl(parts.query))
            except ValueError:
                continue
        return cls(values)

    def __call__(self, text: str, limit: int = MAX_TEXT) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _CONTROL.sub(" ", text)
        if len(text) > limit:
            text = text[:limit] + "..."
        return text
