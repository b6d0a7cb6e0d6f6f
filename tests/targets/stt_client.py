"""A speech client for tests and benchmarks: the real dialer, Session and measurement core."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from probed.adapters import (
    AssemblyAIAdapter,
    AssemblyAIOptions,
    DeepgramAdapter,
    DeepgramOptions,
    GenericAdapter,
    GenericProtocol,
    SpeechAdapter,
)
from probed.audio import Clip, UtteranceAudio, load_manifest, prepare
from probed.config import ConnectionConfig, SetupStepConfig, TlsConfig
from probed.config.schema.framing import FramingConfig
from probed.connection import Session
from probed.dial import Dialer
from probed.speech import close_session, open_session

MANIFEST = load_manifest()


@dataclass
class Endpoint:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    target: str = "stt emulator"
    subprotocols: tuple[str, ...] = ()
    tls: TlsConfig = field(default_factory=TlsConfig)
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    setup: tuple[SetupStepConfig, ...] = ()
    framing: FramingConfig | None = None

    def request_headers(self) -> dict[str, str]:
        return dict(self.headers)

    def proxy(self) -> str | None:
        return None


def adapter_for(protocol: str, url: str, **options: object) -> SpeechAdapter:
    if protocol == "deepgram":
        return DeepgramAdapter(DeepgramOptions(url=url, **options))  # type: ignore[arg-type]
    if protocol == "assemblyai":
        return AssemblyAIAdapter(AssemblyAIOptions(url=url, **options))  # type: ignore[arg-type]
    return GenericAdapter(GenericProtocol(url=url, **options))  # type: ignore[arg-type]


@asynccontextmanager
async def session(adapter: SpeechAdapter) -> AsyncIterator[Session]:
    """A provider session opened the way a probe opens it: dial, then the adapter's setup."""
    request = adapter.connect_request()
    conn = await Dialer(Endpoint(request.url, dict(request.headers))).dial()
    held = Session(ws=conn, epoch=1, started_ns=0, resume_handle=None)
    try:
        await open_session(held, adapter)
        yield held
    finally:
        if conn.close_code is None:
            # The peer may already be gone; the connection is closed below either way.
            with contextlib.suppress(Exception):
                await close_session(held, adapter)
        await conn.close()


def audio(clip_id: str, adapter: SpeechAdapter, trailing: float = 1.0) -> UtteranceAudio:
    clip: Clip = MANIFEST.load(clip_id, rate=adapter.sample_rate)
    return prepare(clip, chunk_ms=adapter.chunk_ms, encoding=adapter.encoding, trailing=trailing)
