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
