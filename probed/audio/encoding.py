"""Sample formats that providers accept on the wire: PCM16 little-endian and G.711 mu-law."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

Encoding = Literal["pcm16", "mulaw"]

_MULAW_BIAS = 0x84
_MULAW_CLIP = 32635


def to_int16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    scaled = np.clip(np.round(samples.astype(np.float64) * 32768.0), -32768, 32767)
    return scaled.astype(np.int16)


def pcm16le(samples: npt.NDArray[np.int16]) -> bytes:
    return samples.astype("<i2").tobytes()


def mulaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """G.711 mu-law, the classic segment/mantissa form (one byte per sample)."""
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(x), _MULAW_CLIP) + _MULAW_BIAS
    # Segment = position of the highest set bit above bit 7, 0..7.
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return bytes(code.astype(np.uint8).tobytes())


def mulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    code = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def encode(samples: npt.NDArray[np.int16], encoding: Encoding) -> bytes:
    if encoding == "pcm16":
        return pcm16le(samples)
    return mulaw_encode(samples)


def bytes_per_sample(encoding: Encoding) -> int:
    return 2 if encoding == "pcm16" else 1
