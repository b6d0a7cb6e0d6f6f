"""The lightest WebSocket echo server we can write: an asyncio protocol on uvloop, no library.

For the scale benchmark, where the server must not be what is measured: at 10,000 sessions a
websockets server spends more CPU per message than the client it serves. This one parses the
upgrade, unmasks and echoes data frames (one write per frame), answers pings and closes, and runs
as several processes sharing one port with SO_REUSEPORT.

    python -m tests.perf.fast_echo --procs 2
    # prints "listening on ws://127.0.0.1:PORT/ pids PID,PID" once every process listens
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import signal
import socket
import sys
from typing import cast

import uvloop

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_FRAME = 1 << 20
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA


def _header(first: int, length: int) -> bytes:
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def _unmask(mask: bytes, payload: bytes) -> bytes:
    if not payload:
        return payload
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they behave as one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open and not self._upgrade():
            return
        self._frames()

    def _upgrade(self) -> bool:
        assert self.transport is not None
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self.transport.abort()
            return False
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        key = ""
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        self.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        self.open = True
        return True

    def _frames(self) -> None:
        assert self.transport is not None
        buf = self.buf
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            length, pos = second & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            if length > _MAX_FRAME:
                self.transport.abort()
                return
            masked = second & 0x80
            if len(buf) < pos + (4 if masked else 0) + length:
                return
            if masked:
                mask = bytes(buf[pos : pos + 4])
                pos += 4
                payload = _unmask(mask, bytes(buf[pos : pos + length]))
            else:
                payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            opcode = first & 0x0F
            if opcode == _OP_CLOSE:
                self.transport.write(_header(0x80 | _OP_CLOSE, len(payload)) + payload)
                self.transport.close()
                return
            if opcode == _OP_PING:
                self.transport.write(_header(0x80 | _OP_PONG, len(payload)) + payload)
            elif opcode != _OP_PONG:
                self.transport.write(_header(first, len(payload)) + payload)


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def _serve(sock: socket.socket, ready: int) -> None:
    sock.listen(4096)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, sock=sock, backlog=4096)
    os.write(ready, b".")
    os.close(ready)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    # Bound (not listening) here only to pick the port the workers share.
    anchor = _listener(args.port)
    port = anchor.getsockname()[1]
    pids = []
    ready_r, ready_w = os.pipe()
    for _ in range(args.procs):
        pid = os.fork()
        if pid == 0:
            anchor.close()
            os.close(ready_r)
            uvloop.run(_serve(_listener(port), ready_w))
            os._exit(0)
        pids.append(pid)
    os.close(ready_w)
    # Announced once every worker listens, so that no client is refused.
    got = b""
    while len(got) < args.procs:
        chunk = os.read(ready_r, args.procs)
        if not chunk:
            sys.exit("an echo worker died before listening")
        got += chunk
    print(f"listening on ws://127.0.0.1:{port}/ pids {','.join(map(str, pids))}", flush=True)

    def forward(signum: int, _frame: object) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    for pid in pids:
        os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()
