"""WebRTC audio over WHIP (the ``webrtc`` extra: aiortc, numpy).

``WebRtcSession`` is the whole client: ``connect()`` returns the set-up phases, ``echoes()``
yields one measurement per known signal sent, ``stats()`` gives RTCP figures in seconds, and
``close()`` deletes the WHIP session. Failures are ``WebRtcError`` with a bounded ``reason``.
"""

from probed.webrtc.errors import WebRtcError
from probed.webrtc.media import LoopedPcm, NoiseSource, PcmSource
from probed.webrtc.session import EchoMeasurement, SetupPhases, WebRtcSession
from probed.webrtc.signal import EchoOutcome
from probed.webrtc.stats import RtcpStats

__all__ = [
    "EchoMeasurement",
    "EchoOutcome",
    "LoopedPcm",
    "NoiseSource",
    "PcmSource",
    "RtcpStats",
    "SetupPhases",
    "WebRtcError",
    "WebRtcSession",
]
