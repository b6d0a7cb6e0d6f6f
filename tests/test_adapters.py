"""Provider adapters: requests they build, events they parse, and fuzzing of their parsers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed.adapters import (
    AdapterError,
    AssemblyAIAdapter,
    AssemblyAIOptions,
    DeepgramAdapter,
    DeepgramOptions,
    GenericAdapter,
    GenericProtocol,
    SpeechAdapter,
)
from probed.adapters.events import (
    MAX_TEXT,
    Closing,
    Event,
    Final,
    Partial,
    ProviderError,
    Ready,
    SpeechStarted,
    SpeechStopped,
    Unknown,
)


def dg_results(
    text: str, *, is_final: bool = False, speech_final: bool = False, from_finalize: bool = False
) -> str:
    return json.dumps({
        "type": "Results", "channel_index": [0, 1], "start": 0.0, "duration": 1.0,
        "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": []}]},
    })  # fmt: skip


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_deepgram_request_carries_config_in_the_query_and_key_in_a_header() -> None:
    adapter = DeepgramAdapter(DeepgramOptions(url="ws://127.0.0.1:1/v1/listen", api_key="sekrit"))
    request = adapter.connect_request()
    q = query(request.url)
    assert q["encoding"] == ["linear16"] and q["sample_rate"] == ["16000"]
    assert q["interim_results"] == ["true"] and q["endpointing"] == ["300"]
    assert request.headers == {"Authorization": "Token sekrit"}
    assert request.safe_url == "ws://127.0.0.1:1/v1/listen"
    assert adapter.ready_on_open
    assert json.loads(adapter.flush_message()) == {"type": "Finalize"}
    assert adapter.close_messages() == ['{"type": "CloseStream"}']
    assert adapter.audio_message(b"\x01\x02") == b"\x01\x02"
    with pytest.raises(ValueError, match="empty"):
        adapter.audio_message(b"")
    mulaw = DeepgramAdapter(
        DeepgramOptions(encoding="mulaw", sample_rate=8000, endpointing_ms=None)
    )
    q = query(mulaw.connect_request().url)
    assert q["encoding"] == ["mulaw"] and q["endpointing"] == ["false"]


def test_deepgram_turn_is_the_final_pieces_since_the_last_endpoint() -> None:
    dg = DeepgramAdapter()
    assert dg.parse(dg_results("")) == []
    assert dg.parse(dg_results("set a")) == [Partial("set a")]
    assert dg.parse(dg_results("set a timer", is_final=True)) == [Partial("set a timer")]
    assert dg.parse(dg_results("for ten")) == [Partial("set a timer for ten")]
    assert dg.parse(dg_results("for ten minutes", is_final=True, speech_final=True)) == [
        Final("set a timer for ten minutes", "speech_final")
    ]
    # A Finalize with nothing buffered ends no turn.
    assert dg.parse(dg_results("", is_final=True, from_finalize=True)) == []
    assert dg.parse(dg_results("stop", is_final=True)) == [Partial("stop")]
    ended = dg.parse(json.dumps({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.5}))
    assert ended == [SpeechStopped(2.5), Final("stop", "utterance_end")]
    assert dg.parse(dg_results("go", is_final=True, from_finalize=True)) == [
        Final("go", "from_finalize")
    ]
    assert dg.parse('{"type":"SpeechStarted","channel":[0],"timestamp":0.5}') == [
        SpeechStarted(0.5)
    ]
    assert dg.parse('{"type":"Metadata","request_id":"x"}') == [Closing("metadata")]
    assert dg.parse('{"type":"Surprise"}') == [Unknown("Surprise")]
    dg.parse(dg_results("left over", is_final=True))
    dg.new_turn()
    assert dg.parse(dg_results("fresh", is_final=True, speech_final=True)) == [
        Final("fresh", "speech_final")
    ]


def test_assemblyai_begin_turns_and_formatted_revision() -> None:
    aai = AssemblyAIAdapter(AssemblyAIOptions(api_key="k"))
    request = aai.connect_request()
    assert request.headers == {"Authorization": "k"}
    q = query(request.url)
    assert q["speech_model"] == ["universal-streaming-english"] and q["encoding"] == ["pcm_s16le"]
    assert aai.chunk_ms == 50 and not aai.ready_on_open
    assert aai.parse('{"type":"Begin","id":"abc","expires_at":1}') == [Ready("abc")]

    def turn(text: str, end: bool, formatted: bool = False, words: object = None) -> str:
        return json.dumps({"type": "Turn", "turn_order": 0, "transcript": text,
                           "end_of_turn": end, "turn_is_formatted": formatted,
                           "words": words or []})  # fmt: skip

    assert aai.parse(turn("", False, words=[{"text": "run", "word_is_final": False}])) == [
        Partial("run")
    ]
    assert aai.parse(turn("run the", False)) == [Partial("run the")]
    assert aai.parse(turn("run the tests", True)) == [Final("run the tests", "end_of_turn")]
    assert aai.parse(turn("Run the tests.", True, formatted=True)) == [
        Final("Run the tests.", "end_of_turn_formatted", revision=True)
    ]
    # The same turn declared final a second time, unformatted: a duplicate, not a revision.
    assert aai.parse(turn("run the tests", True)) == [Final("run the tests", "end_of_turn")]
    assert aai.parse('{"type":"Error","error_code":3005,"error":"boom"}') == [
        ProviderError("3005", "boom", fatal=True)
    ]
    assert aai.parse('{"type":"Termination","audio_duration_seconds":1}') == [
        Closing("termination")
    ]


def test_generic_protocol_from_config() -> None:
    protocol = GenericProtocol(
        url="ws://127.0.0.1:1/stt",
        audio_field="data.pcm",
        audio_message={"event": "media"},
        type_field="event",
        ready_types=(),
        partial_types=("transcript",),
        final_types=(),
        final_flag="is_final",
        text_field="alternatives.0.text",
        error_types=("failure",),
        error_code_field="detail.code",
    )
    adapter = GenericAdapter(protocol)
    assert adapter.ready_on_open
    message = json.loads(adapter.audio_message(b"\x00\x01"))
    assert message == {"event": "media", "data": {"pcm": base64.b64encode(b"\x00\x01").decode()}}
    partial = {"event": "transcript", "alternatives": [{"text": "hi"}]}
    assert adapter.parse(json.dumps(partial)) == [Partial("hi")]
    assert adapter.parse(json.dumps({**partial, "is_final": True})) == [Final("hi", "is_final")]
    failure = {"event": "failure", "detail": {"code": 42}, "message": "no"}
    assert adapter.parse(json.dumps(failure)) == [ProviderError("42", "no", fatal=True)]
    assert adapter.parse('{"no_event": 1}') == [Unknown("<NoneType>")]
    binary = GenericAdapter(GenericProtocol(url="ws://x", audio="binary"))
    assert binary.audio_message(b"ab") == b"ab"
    assert binary.parse('{"type":"final","text":"done"}') == [Final("done", "final")]
    with pytest.raises(ValueError, match="what ends a turn"):
        GenericAdapter(GenericProtocol(url="ws://x", final_types=()))


ADAPTERS: list[Callable[[], SpeechAdapter]] = [
    DeepgramAdapter,
    AssemblyAIAdapter,
    lambda: GenericAdapter(GenericProtocol(url="ws://x", final_flag="is_final")),
]


@pytest.mark.parametrize("make", ADAPTERS)
@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xff\xfe", "bad_encoding"),
        ("{not json", "bad_json"),
        ("[1, 2]", "not_object"),
        ('"text"', "not_object"),
    ],
)
def test_malformed_frames_raise_the_typed_error(
    make: Callable[[], SpeechAdapter], frame: str | bytes, reason: str
) -> None:
    with pytest.raises(AdapterError) as info:
        make().parse(frame)
    assert info.value.reason == reason


# -- fuzzing ----------------------------------------------------------------------------------

MESSAGE_TYPES = [
    "Results", "UtteranceEnd", "SpeechStarted", "Metadata", "Error", "Begin", "Turn",
    "Termination", "Warning", "partial", "final", "ready", "error", "speech_started",
]  # fmt: skip
FIELDS = [
    "channel", "alternatives", "transcript", "is_final", "speech_final", "from_finalize",
    "timestamp", "last_word_end", "words", "text", "end_of_turn", "turn_is_formatted",
    "turn_order", "error_code", "error", "description", "code", "message", "id",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(MESSAGE_TYPES) | json_values},
    optional={k: json_values for k in FIELDS},
)
frames = (
    st.binary(max_size=200)
    | st.text(max_size=200)
    | json_values.map(json.dumps)
    | messages.map(lambda m: json.dumps(m, allow_nan=True))
    | messages.map(lambda m: json.dumps(m).encode())
)


@pytest.mark.parametrize("make", ADAPTERS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(frames, min_size=1, max_size=5))
def test_parsers_raise_nothing_but_their_own_error(
    make: Callable[[], SpeechAdapter], sequence: list[str | bytes]
) -> None:
    adapter = make()
    for frame in sequence:
        try:
            events: list[Event] = adapter.parse(frame)
        except AdapterError as exc:
            assert exc.reason in {"bad_json", "not_object", "bad_field", "bad_encoding"}
            continue
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, Event)
            # Whatever the peer sends, what the probe keeps of it is bounded.
            for name in ("text", "message", "type_name", "code"):
                assert len(getattr(event, name, "")) <= MAX_TEXT
