"""The WHIP client's HTTP handling against a hand-written aiohttp server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

pytest.importorskip("aiortc")

from probed.targets.control import HttpServer
from probed.webrtc import whip
from probed.webrtc.errors import WebRtcError

ANSWER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []
    gate = asyncio.Event()

    async def redirect(request: web.Request) -> web.Response:
        seen.append(request)
        raise web.HTTPTemporaryRedirect("/api/whip")

    async def created(request: web.Request) -> web.Response:
        seen.append(request)
        assert await request.text() == "v=0 offer"
        return web.Response(
            status=201,
            content_type="application/sdp",
            text=ANSWER,
            headers={"Location": "sessions/abc", "ETag": '"e1"'},
        )

    async def html(request: web.Request) -> web.Response:
        return web.Response(status=201, content_type="text/html", headers={"Location": "/x"})

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(status=500)

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=201, headers={"Location": "/x"})
        resp.content_type = "application/sdp"
        await resp.prepare(request)
        for _ in range(64):  # 1 MiB, more than any answer may be
            await resp.write(b"v" * 16384)
        return resp

    async def delete(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/whip", redirect)
    app.router.add_post("/api/whip", created)
    app.router.add_post("/html", html)
    app.router.add_post("/slow", slow)
    app.router.add_post("/huge", huge)
    app.router.add_delete("/api/sessions/abc", delete)
    http = HttpServer(app, "127.0.0.1", 0)
    await http.start()
    try:
        yield f"http://127.0.0.1:{http.port}", seen
    finally:
        gate.set()
        await http.stop()


async def test_redirect_is_followed_and_location_resolved_against_it(
    server: tuple[str, list[web.Request]],
) -> None:
    base, seen = server
    async with aiohttp.ClientSession() as http:
        answer = await whip.post_offer(http, f"{base}/whip", "v=0 offer", token="t0k")
        assert answer.session_url == f"{base}/api/sessions/abc"
        assert answer.etag == '"e1"'
        assert answer.sdp == ANSWER
        assert await whip.delete_session(http, answer.session_url, token="t0k") is None
        assert await whip.delete_session(http, f"{base}/nope", token=None) == "http_404"
    assert [r.method for r in seen] == ["POST", "POST", "DELETE"]
    assert all(r.headers["Authorization"] == "Bearer t0k" for r in seen)
    assert seen[1].content_type == "application/sdp"


async def test_non_sdp_answer_is_bad_answer(server: tuple[str, list[web.Request]]) -> None:
    base, _ = server
    async with aiohttp.ClientSession() as http:
        with pytest.raises(WebRtcError) as caught:
            await whip.post_offer(http, f"{base}/html", "v=0 offer", token=None)
    assert caught.value.reason == "bad_answer"


async def test_oversized_answer_is_bad_answer(server: tuple[str, list[web.Request]]) -> None:
    base, _ = server
    async with aiohttp.ClientSession() as http:
        with pytest.raises(WebRtcError) as caught:
            await whip.post_offer(http, f"{base}/huge", "v=0 offer", token=None)
    assert caught.value.reason == "bad_answer"


async def test_unknown_path_is_http_status(server: tuple[str, list[web.Request]]) -> None:
    base, _ = server
    async with aiohttp.ClientSession() as http:
        with pytest.raises(WebRtcError) as caught:
            await whip.post_offer(http, f"{base}/missing", "v=0 offer", token=None)
    assert caught.value.reason == "http_404"


async def test_caller_deadline_bounds_a_hanging_server(
    server: tuple[str, list[web.Request]],
) -> None:
    base, _ = server
    async with aiohttp.ClientSession() as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await whip.post_offer(http, f"{base}/slow", "v=0 offer", token=None)


def test_client_errors_map_to_bounded_reasons() -> None:
    assert whip.classify_client_error(TimeoutError()).reason == "timeout"
    assert whip.classify_client_error(aiohttp.ServerDisconnectedError()).reason == "reset"
    assert whip.classify_client_error(aiohttp.ClientPayloadError("x")).reason == "http_error"
