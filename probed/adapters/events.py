"""What a realtime speech or voice provider said, whatever its wire format.

One vocabulary for every adapter: speech-to-text providers use the first half; voice agents
(Gemini Live, OpenAI Realtime) add the response side (audio, text, tool calls, turn and session
lifecycle). Text that comes from the provider is kept for scoring and debug output only; it never
becomes a metric label.
"""

from __future__ import annotations

from dataclasses import dataclass

# Provider-supplied strings are bounded so a hostile peer cannot make the probe hoard memory.
MAX_TEXT = 4096
MAX_SHORT = 200


def clip_text(value: str, limit: int = MAX_TEXT) -> str:
    return value if len(value) <= limit else value[:limit]


@dataclass(frozen=True, slots=True)
class Ready:
    """The provider accepted the session's configuration; audio may flow."""

    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Partial:
    """An interim hypothesis of the current turn's text (the whole of it so far)."""

    text: str


@dataclass(frozen=True, slots=True)
class Final:
    """The provider declared the turn's text final, by `rule` (e.g. speech_final, end_of_turn).

    `revision` marks a later, refined version of a turn already declared final (AssemblyAI's
    formatted follow-up): expected, so not a duplicate.
    """

    text: str
    rule: str
    revision: bool = False


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The provider's VAD heard speech begin; offset on the provider's audio clock, seconds."""

    offset: float | None = None


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    offset: float | None = None


@dataclass(frozen=True, slots=True)
class ProviderError:
    """An error the provider reported in-band. `fatal` when the provider ends the session."""

    code: str
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed message of a type the adapter does not know: logged, never fatal."""

    type_name: str


@dataclass(frozen=True, slots=True)
class Closing:
    """The provider is ending the session gracefully (Deepgram Metadata, AssemblyAI Termination)."""

    reason: str


# -- the response side, for voice agents ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseAudio:
    """A chunk of the agent's spoken answer, decoded; `mime` as the provider labels it."""

    data: bytes
    mime: str


@dataclass(frozen=True, slots=True)
class ResponseText:
    """Text of the agent's answer (or of its speech): a delta unless `final`."""

    text: str
    final: bool = False


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The agent asks the client to run a function; `arguments` is the JSON text as sent."""

    name: str
    call_id: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The agent stopped its answer because the user spoke (barge-in)."""


@dataclass(frozen=True, slots=True)
class TurnComplete:
    """The agent finished its turn."""


@dataclass(frozen=True, slots=True)
class GoAway:
    """The provider will end the connection soon; `time_left` in seconds when it says."""

    time_left: float | None


@dataclass(frozen=True, slots=True)
class ResumptionHandle:
    """A handle to resume the session on a new connection; usable only when `resumable`."""

    handle: str
    resumable: bool


Event = (
    Ready
    | Partial
    | Final
    | SpeechStarted
    | SpeechStopped
    | ProviderError
    | Unknown
    | Closing
    | ResponseAudio
    | ResponseText
    | ToolCall
    | Interrupted
    | TurnComplete
    | GoAway
    | ResumptionHandle
)
