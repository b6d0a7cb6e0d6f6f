"""Gemini Live and OpenAI Realtime adapters: what they send, what they read, and fuzzing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed.adapters import (
    AdapterError,
    GeminiLiveAdapter,
    GeminiLiveOptions,
    OpenAIRealtimeAdapter,
    OpenAIRealtimeOptions,
    VoiceAdapter,
)
from probed.adapters.events import (
    Event,
    Final,
    GoAway,
    Interrupted,
    Partial,
    ProviderError,
    Ready,
    ResponseAudio,
    ResumptionHandle,
    SpeechStopped,
    ToolCall,
    TurnComplete,
    Unknown,
)
from tests.voice_helpers import CODE_TOOL

AUDIO = base64.b64encode(b"\x01\x00" * 10).decode()


def gem(**kw: object) -> GeminiLiveAdapter:
    return GeminiLiveAdapter(GeminiLiveOptions(tools=(CODE_TOOL,), **kw))  # type: ignore[arg-type]


def test_gemini_setup_carries_model_tools_detection_transcription_and_resumption() -> None:
    adapter = gem(api_key="sekrit", silence_duration_ms=300)
    adapter.resume_with("h1")
    request = adapter.connect_request()
    assert request.headers == {"x-goog-api-key": "sekrit"} and "sekrit" not in request.url
    assert request.library_pings is False
    [raw] = adapter.setup_messages()
    setup = json.loads(raw)["setup"]
    assert setup["model"].startswith("models/")
    assert setup["generationConfig"]["responseModalities"] == ["AUDIO"]
    assert setup["tools"][0]["functionDeclarations"][0]["name"] == "generate_code"
    assert setup["realtimeInputConfig"]["automaticActivityDetection"] == {
        "disabled": False,
        "silenceDurationMs": 300,
    }
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {"handle": "h1"}
    token = gem(ephemeral_token="tok").connect_request()
    assert "access_token=tok" in token.url and token.safe_url.endswith("BidiGenerateContent")


def test_gemini_flush_depends_on_activity_detection() -> None:
    assert "audioStreamEnd" in str(gem().flush_messages())
    manual = gem(automatic_activity_detection=False)
    assert "activityStart" in str(manual.turn_start_messages())
    assert "activityEnd" in str(manual.flush_messages())


def test_gemini_reads_binary_frames_in_either_key_casing() -> None:
    adapter = gem()
    assert adapter.parse(b'{"setup_complete": {"session_id": "s1"}}') == [Ready("s1")]
    events = adapter.parse(
        json.dumps({"server_content": {"input_transcription": {"text": "turn on"}}}).encode()
    )
    assert events == [Partial("turn on")]
    # The model committing to an answer declares the accumulated text final (rule b).
    audio = {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000",
                                                     "data": AUDIO}}]}}  # fmt: skip
    events = adapter.parse(json.dumps({"serverContent": audio}))
    assert events[0] == Final("turn on", "model_turn")
    assert isinstance(events[1], ResponseAudio) and events[1].data == b"\x01\x00" * 10
    # Fragments after the final are late, not a second final.
    assert adapter.parse(json.dumps({"serverContent": {"inputTranscription": {"text": "x"}}})) == []
    assert adapter.late_fragments == 1
    assert adapter.parse('{"serverContent": {"interrupted": true}}') == [Interrupted()]
    assert adapter.parse('{"serverContent": {"turnComplete": true}}') == [TurnComplete()]


def test_gemini_final_rules_finished_and_quiet() -> None:
    adapter = gem()
    events = adapter.parse(
        '{"serverContent": {"inputTranscription": {"text": "a", "finished": true}}}'
    )
    assert events[-1] == Final("a", "finished")
    adapter.new_turn()
    adapter.parse('{"serverContent": {"inputTranscription": {"text": "b"}}}')
    assert adapter.settle() == [Final("b", "quiet")]
    assert adapter.settle() == []


def test_gemini_tool_call_go_away_handles_and_errors() -> None:
    adapter = gem()
    call = {
        "toolCall": {"functionCalls": [{"id": "c1", "name": "generate_code", "args": {"arity": 2}}]}
    }
    [event] = adapter.parse(json.dumps(call))
    assert event == ToolCall("generate_code", "c1", '{"arity": 2}')
    [answer] = adapter.tool_response_messages(event, {"result": "ok"})
    assert json.loads(answer)["toolResponse"]["functionResponses"][0]["id"] == "c1"
    assert adapter.parse('{"goAway": {"timeLeft": "50s"}}') == [GoAway(50.0)]
    assert adapter.parse('{"sessionResumptionUpdate": {"newHandle": "h", "resumable": true}}') == [
        ResumptionHandle("h", True)
    ]
    # An empty handle is never resumable, whatever the flag says.
    assert adapter.parse('{"sessionResumptionUpdate": {"newHandle": "", "resumable": true}}') == [
        ResumptionHandle("", False)
    ]
    [error] = adapter.parse('{"error": {"code": 400, "message": "bad", "status": "INVALID"}}')
    assert isinstance(error, ProviderError) and error.fatal and error.code == "INVALID"
    assert adapter.parse('{"somethingNew": {}}') == [Unknown("somethingNew")]
    with pytest.raises(AdapterError):
        adapter.parse('{"goAway": {"timeLeft": "soon"}}')


def oai(**kw: object) -> OpenAIRealtimeAdapter:
    return OpenAIRealtimeAdapter(OpenAIRealtimeOptions(tools=(CODE_TOOL,), **kw))  # type: ignore[arg-type]


def test_openai_session_update_server_vad_and_manual_commit() -> None:
    adapter = oai(api_key="sk", model="gpt-realtime-2")
    request = adapter.connect_request()
    assert request.headers["Authorization"] == "Bearer sk" and "model=gpt-realtime-2" in request.url
    [raw] = adapter.setup_messages()
    session = json.loads(raw)["session"]
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["input"]["transcription"]["model"]
    assert session["tools"][0]["name"] == "generate_code"
    assert adapter.flush_messages() == []
    manual = oai(turn_detection="manual")
    assert (
        json.loads(manual.setup_messages()[0])["session"]["audio"]["input"]["turn_detection"]
        is None
    )
    assert [json.loads(m)["type"] for m in manual.flush_messages()] == [
        "input_audio_buffer.commit",
        "response.create",
    ]
    beta = oai(beta=True, ephemeral_token="ek")
    assert beta.connect_request().headers["OpenAI-Beta"] == "realtime=v1"
    assert "input_audio_format" in json.loads(beta.setup_messages()[0])["session"]


def test_openai_events_by_item_and_beta_names() -> None:
    adapter = oai()
    assert adapter.parse('{"type": "session.created"}') == []
    assert adapter.parse('{"type": "session.updated", "session": {"id": "s"}}') == [Ready("s")]
    stop = '{"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 3800, "item_id": "i1"}'
    assert adapter.parse(stop) == [SpeechStopped(3.8)]
    adapter.parse('{"type": "input_audio_buffer.committed", "item_id": "i1"}')
    delta = {
        "type": "conversation.item.input_audio_transcription.delta",
        "item_id": "i1",
        "delta": "hi",
    }
    assert adapter.parse(json.dumps(delta)) == [Partial("hi")]
    # A late completion of another item is not this turn's final.
    other = {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i0",
             "transcript": "old"}  # fmt: skip
    assert adapter.parse(json.dumps(other)) == []
    mine = {**other, "item_id": "i1", "transcript": "hi there"}
    assert adapter.parse(json.dumps(mine)) == [Final("hi there", "completed")]
    assert adapter.parse(json.dumps(mine)) == []
    for name in ("response.output_audio.delta", "response.audio.delta"):
        [audio] = adapter.parse(json.dumps({"type": name, "delta": AUDIO}))
        assert isinstance(audio, ResponseAudio)
    item = {"id": "f1", "type": "function_call", "name": "generate_code", "call_id": "c9"}
    added = {"type": "response.output_item.added", "item": item}
    assert adapter.parse(json.dumps(added)) == []
    done = {"type": "response.function_call_arguments.done", "item_id": "f1", "arguments": "{}"}
    assert adapter.parse(json.dumps(done)) == [ToolCall("generate_code", "c9", "{}")]
    cancelled = {"type": "response.done", "response": {"status": "cancelled"}}
    assert adapter.parse(json.dumps(cancelled)) == [Interrupted(), TurnComplete()]
    expired = {"type": "error", "error": {"code": "session_expired", "message": "60 minutes"}}
    [error] = adapter.parse(json.dumps(expired))
    assert isinstance(error, ProviderError) and error.fatal


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=12,
)
gemini_keys = st.sampled_from([
    "setupComplete", "serverContent", "toolCall", "goAway", "sessionResumptionUpdate",
    "voiceActivity", "error", "server_content", "tool_call", "usageMetadata",
])  # fmt: skip
inner_keys = st.sampled_from([
    "inputTranscription", "modelTurn", "parts", "inlineData", "data", "mimeType", "text",
    "finished", "turnComplete", "interrupted", "functionCalls", "args", "timeLeft", "newHandle",
    "resumable", "type", "audioOffset", "outputTranscription", "generationComplete",
])  # fmt: skip
structured = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.just(AUDIO),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(inner_keys, inner, max_size=4),
    max_leaves=16,
)
gemini_frames = st.dictionaries(gemini_keys, structured, max_size=3).map(json.dumps)
openai_types = st.sampled_from([
    "session.updated", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed", "response.output_audio.delta",
    "response.audio.delta", "response.function_call_arguments.done", "response.output_item.added",
    "response.done", "error", "response.output_audio_transcript.done", "x",
])  # fmt: skip
openai_frames = st.builds(
    lambda kind, body: json.dumps({**body, "type": kind}),
    openai_types,
    st.dictionaries(st.sampled_from(["item_id", "delta", "transcript", "audio_end_ms", "item",
                                     "response", "error", "arguments", "call_id", "name"]),
                    structured, max_size=4),
)  # fmt: skip
frames = (
    gemini_frames
    | openai_frames
    | json_values.map(json.dumps)
    | st.binary(max_size=32)
    | st.text(max_size=32)
)


@pytest.mark.parametrize("make", [gem, oai], ids=["gemini", "openai"])
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=st.lists(frames, min_size=1, max_size=6))
def test_voice_parsers_raise_nothing_but_their_own_error(
    make: Callable[[], VoiceAdapter], sequence: list[str | bytes]
) -> None:
    adapter = make()
    for frame in sequence:
        try:
            events: list[Event] = adapter.parse(frame)
        except AdapterError as exc:
            assert exc.reason in {"bad_json", "not_object", "bad_field", "bad_encoding"}
            continue
        assert isinstance(events, list)
    adapter.settle()
