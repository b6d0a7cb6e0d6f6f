"""The reference WHIP target's HTTP surface, spoken to with plain aiohttp."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

pytest.importorskip("aiortc")

from aiortc import RTCPeerConnection
from yarl import URL

from probed.targets.whip import WhipTarget
from probed.webrtc.loopback import loopback_candidates

SDP = "application/sdp"


@pytest.fixture(autouse=True)
def _loopback() -> Iterator[None]:
    with loopback_candidates():
        yield


@pytest.fixture
async def target() -> AsyncIterator[WhipTarget]:
    async with WhipTarget() as t:
        yield t


async def _offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_post_creates_a_session_that_delete_ends(target: WhipTarget) -> None:
    pc, offer = await _offer()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(target.url, data=offer, headers={"Content-Type": SDP}) as r:
                assert r.status == 201
                assert r.content_type == SDP
                assert (await r.text()).startswith("v=0")
                location = r.headers["Location"]
                assert location.startswith("/whip/session/")
                assert r.headers["ETag"].startswith('"')
            assert target.sessions == 1
            session_url = str(r.url.join(URL(location)))
            async with http.get(session_url) as r:
                assert r.status == 200
            async with http.patch(session_url, data=b"a=end-of-candidates") as r:
                assert r.status == 405
            async with http.delete(session_url) as r:
                assert r.status == 200
            async with http.delete(session_url) as r:
                assert r.status == 404
    finally:
        await pc.close()
    assert target.sessions == 0 and target.deletes == 1


async def test_peer_gone_without_delete_is_dropped(target: WhipTarget) -> None:
    from aiortc import RTCSessionDescription

    from tests.conftest import wait_until

    pc, offer = await _offer()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(target.url, data=offer, headers={"Content-Type": SDP}) as r,
        ):
            answer = await r.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_until(lambda: pc.connectionState == "connected", what="peer connected")
        assert target.sessions == 1
    finally:
        await pc.close()  # no DELETE: the target learns it from the transport
    await wait_until(lambda: target.sessions == 0, what="target dropped the dead session")
    assert target.deletes == 0


async def test_options_advertises_sdp(target: WhipTarget) -> None:
    async with aiohttp.ClientSession() as http, http.options(target.url) as r:
        assert r.status == 204
        assert r.headers["Accept-Post"] == SDP


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", "{}", 415),
        (SDP, "not an offer", 400),
        (SDP, "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 400),
    ],
)
async def test_bad_offers_are_4xx(
    target: WhipTarget, content_type: str, body: str, status: int
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(target.url, data=body, headers={"Content-Type": content_type}) as r,
    ):
        assert r.status == status
    assert target.sessions == 0


async def test_refusal_carries_retry_after(target: WhipTarget) -> None:
    target.refuse(503, retry_after=7)
    async with (
        aiohttp.ClientSession() as http,
        http.post(target.url, data="v=0\r\n", headers={"Content-Type": SDP}) as r,
    ):
        assert r.status == 503
        assert r.headers["Retry-After"] == "7"
    target.heal()
    assert target.refuse_status is None


def test_refusal_status_must_be_an_error() -> None:
    with pytest.raises(ValueError, match="400"):
        WhipTarget().refuse(200)


async def test_faults_over_http_apply_whole_or_not_at_all(target: WhipTarget) -> None:
    async with aiohttp.ClientSession() as http:
        fault = f"{target.control_url}fault"
        async with http.post(fault, json={"echo": False, "answer": "no_location"}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["faults"]["echo"] is False and body["faults"]["answer"] == "no_location"
        assert not target.echo_enabled
        async with http.post(fault, json={"mute": True, "refuse_status": 200}) as r:
            assert r.status == 400
        assert not target.muted  # the bad status kept the valid mute from applying
        async with http.post(fault, json={"answer": "sideways"}) as r:
            assert r.status == 400
        async with http.post(fault, json={"refuse_status": 503, "retry_after": 2}) as r:
            assert r.status == 200
        assert (target.refuse_status, target.retry_after) == (503, 2)
        async with http.post(f"{target.control_url}heal") as r:
            assert (await r.json())["faults"]["refuse_status"] is None
        async with http.get(f"{target.control_url}status") as r:
            status = await r.json()
    assert status["faults"]["echo"] is True and status["sessions"] == 0


async def test_cli_serves_the_target() -> None:
    import asyncio
    import re
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probed",
        "target",
        "whip",
        "--mode",
        "reflect",
        "--loopback-ice",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+/whip)", line)
        assert match, line
        async with aiohttp.ClientSession() as http, http.options(match.group(1)) as r:
            assert r.status == 204
    finally:
        proc.terminate()
        await proc.wait()
