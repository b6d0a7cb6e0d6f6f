"""The voice-agent measurement core: turns, tool calls and barge-ins on a held conversation."""

from probed.voice.conversation import (
    BARGE_IN_OUTCOMES,
    TURN_OUTCOMES,
    BargeInOutcome,
    BargeInResult,
    Conversation,
    Mode,
    TurnOutcome,
    TurnResult,
)
from probed.voice.playback import Playback
from probed.voice.tools import TOOL_RESULTS, ToolExpectation, ToolResult, call_matches, judge

__all__ = [
    "BARGE_IN_OUTCOMES",
    "TOOL_RESULTS",
    "TURN_OUTCOMES",
    "BargeInOutcome",
    "BargeInResult",
    "Conversation",
    "Mode",
    "Playback",
    "ToolExpectation",
    "ToolResult",
    "TurnOutcome",
    "TurnResult",
    "call_matches",
    "judge",
]
