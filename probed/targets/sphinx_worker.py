"""The STT emulator's recogniser process: pocketsphinx behind a tiny pipe protocol.

Run by the emulator as `python -m probed.targets.sphinx_worker`, one per session. pocketsphinx
holds the GIL while it decodes, so it gets its own process: the emulator's event loop (and any
probe sharing it in a test) keeps its timing.

Requests on stdin: one op byte, a 4-byte little-endian length, the payload.
  S  start an utterance       F  feed PCM16 LE mono 16 kHz audio
  H  current hypothesis       E  end the utterance, final hypothesis
H and E are answered on stdout with a 4-byte length and the UTF-8 text.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO


def _reply(out: BinaryIO, text: str) -> None:
    data = text.encode()
    out.write(len(data).to_bytes(4, "little") + data)
    out.flush()


def _hyp(decoder: Any) -> str:
    hyp = decoder.hyp()
    return str(hyp.hypstr) if hyp is not None else ""


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    from pocketsphinx import Decoder

    decoder = Decoder(loglevel="FATAL")
    active = False
    while True:
        head = inp.read(5)
        if len(head) < 5:
            return
        op, size = head[:1], int.from_bytes(head[1:], "little")
        payload = inp.read(size)
        if op == b"S":
            if active:
                decoder.end_utt()
            decoder.start_utt()
            active = True
        elif op == b"F" and active:
            decoder.process_raw(payload, False, False)
        elif op == b"H":
            _reply(out, _hyp(decoder) if active else "")
        elif op == b"E":
            if active:
                decoder.end_utt()
                active = False
                _reply(out, _hyp(decoder))
            else:
                _reply(out, "")


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
