"""The speech measurement core: one utterance streamed, timed and scored."""

from probed.speech.fixtures import load_utterances
from probed.speech.scoring import partial_matches, word_error_ratio, words
from probed.speech.session import SetupError, close_session, keep_alive, open_session
from probed.speech.utterance import (
    OUTCOMES,
    Channel,
    Mode,
    Outcome,
    UtteranceResult,
    run_utterance,
)

__all__ = [
    "OUTCOMES",
    "Channel",
    "Mode",
    "Outcome",
    "SetupError",
    "UtteranceResult",
    "close_session",
    "keep_alive",
    "load_utterances",
    "open_session",
    "partial_matches",
    "run_utterance",
    "word_error_ratio",
    "words",
]
