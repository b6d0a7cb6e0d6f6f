"""Setting up and ending a provider session with an adapter, over any Channel."""

from __future__ import annotations

import asyncio

from probed.adapters.base import AdapterError, SpeechAdapter
from probed.adapters.events import ProviderError, Ready
from probed.speech.utterance import Channel


class SetupError(Exception):
    """The provider refused or botched the session setup. `reason` is bounded."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


async def open_session(channel: Channel, adapter: SpeechAdapter) -> Ready:
    """Send the setup messages and wait for the provider's ready signal.

    Meant to run as the session handler's `setup` step, under the supervisor's deadline.
    Messages before the ready signal that are not errors are skipped.
    """
    for message in adapter.setup_messages():
        await channel.send(message)
    if adapter.ready_on_open:
        return Ready()
    while True:
        data, _arrived = await channel.recv()
        try:
            events = adapter.parse(data)
        except AdapterError as exc:
            raise SetupError("protocol_error", str(exc)) from None
        for event in events:
            if isinstance(event, Ready):
                return event
            if isinstance(event, ProviderError) and event.fatal:
                raise SetupError("provider_error", f"{event.code}: {event.message}")


async def close_session(channel: Channel, adapter: SpeechAdapter) -> None:
    """Tell the provider we are done, so it can end the session (and its billing) cleanly."""
    for message in adapter.close_messages():
        await channel.send(message)


async def keep_alive(channel: Channel, adapter: SpeechAdapter) -> None:
    """Send the adapter's keepalive every `keepalive_interval` until cancelled.

    For the gaps between utterances on a held session: Deepgram closes a stream that carried
    neither audio nor a text message for 10 s. Run it as a task while no utterance is playing.
    Returns at once for providers that need none.
    """
    message = adapter.keepalive_message()
    interval = adapter.keepalive_interval
    if message is None or interval is None:
        return
    while True:
        await asyncio.sleep(interval)
        await channel.send(message)
