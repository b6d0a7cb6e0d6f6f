"""A client data frame written straight to the transport when nothing stands in its way.

websockets' `send()` is general: per message it enters an async context manager, checks flow
control, serialises a Frame through io.BytesIO and draws a fresh 4-byte mask with
`secrets.token_bytes` (one getrandom system call per frame). Audio streams send a frame every
20 ms each (200 streams: 10,000 frames a second), and py-spy put 47% of a 200-stream run's samples
in that path; on one event loop every microsecond of it is lateness for the chunks queued behind.

When the connection is open, not paused by flow control, not inside a fragmented message, has no
extension (probed never negotiates compression) and is not debug-logging frames, the bytes of the
frame are fixed by RFC 6455: header, masking key, masked payload. `write_now` writes exactly those
and returns True; otherwise it returns False and the caller awaits websockets' own `send()`, which
waits for the buffer to drain, or raises the connection's close as it always has.

Masking keys still come from the kernel's CSPRNG (RFC 6455 section 10.3: unpredictable, from a
strong source of entropy), drawn a thousand at a time instead of one system call each; each key is
used once.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from websockets.asyncio.connection import Connection
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension is part of every wheel
    from websockets.utils import apply_mask

_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_FIN: Final = 0x80
_MASKED: Final = 0x80
_KEYS_AT_ONCE: Final = 1024
_UNKNOWN: Final = object()


class _MaskKeys:
    """Masking keys from os.urandom, fetched in bulk; each handed out once."""

    def __init__(self) -> None:
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        if self._next >= len(self._pool):
            self._pool = os.urandom(4 * _KEYS_AT_ONCE)
            self._next = 0
        key = self._pool[self._next : self._next + 4]
        self._next += 4
        return key


_keys = _MaskKeys()


def frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((_FIN | opcode, _MASKED | n))
    elif n < 65536:
        head = struct.pack("!BBH", _FIN | opcode, _MASKED | 126, n)
    else:
        head = struct.pack("!BBQ", _FIN | opcode, _MASKED | 127, n)
    return head + key + apply_mask(payload, key)


def _sending_fragments(conn: Connection) -> bool:
    """Whether a fragmented message is being sent (websockets 16 renamed the attribute)."""
    for name in ("send_in_progress", "fragmented_send_waiter"):
        waiter = getattr(conn, name, _UNKNOWN)
        if waiter is not _UNKNOWN:
            return waiter is not None
    return True  # a websockets that has neither: step aside rather than guess


def write_now(conn: Connection, data: str | bytes) -> bool:
    """Write `data` as one text (str) or binary (bytes) frame at once, if nothing forbids it."""
    protocol = conn.protocol
    if (
        protocol.state is not State.OPEN
        or protocol.expect_continuation_frame
        or protocol.extensions
        or protocol.debug
        or _sending_fragments(conn)
        or conn.paused
        or conn.transport.is_closing()
    ):
        return False
    if isinstance(data, str):
        conn.transport.write(frame(_OP_TEXT, data.encode(), _keys.take()))
    else:
        conn.transport.write(frame(_OP_BINARY, data, _keys.take()))
    return True
