#!/usr/bin/env python3
"""Regenerate the bundled speech fixtures and their manifest.

    python audio_fixtures/generate.py [--out DIR]

Needs flite (voices slt, rms, awb) and sox on PATH, and probed importable (its energy VAD measures
the speech boundaries). Every step is deterministic: flite synthesises the same samples each time,
sox runs without dither, and the boundaries are measured from the FLAC files as written, so
re-running reproduces the same manifest (tests/test_audio_fixtures.py checks this).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile

from probed.audio.vad import speech_bounds

RATE = 16000
LEAD = 0.3  # silence before speech, seconds
TAIL = 0.3  # silence after speech inside the file; the probe sends its own trailing silence


@dataclass(frozen=True)
class Spec:
    id: str
    voice: str
    # Spoken pieces; between two pieces goes `pause` seconds of silence (a mid-sentence pause).
    pieces: tuple[str, ...]
    pause: float = 0.0

    @property
    def transcript(self) -> str:
        return " ".join(self.pieces)


SPECS = (
    Spec("lights_on", "slt", ("turn on the kitchen lights",)),
    Spec("stop_music", "rms", ("stop the music",)),
    Spec("weather_question", "awb", ("what is the weather like in london tomorrow",)),
    Spec("phone_number", "slt", ("call five five five one two three four",)),
    Spec("code_digits", "rms", ("my code is four seven two nine one three",)),
    Spec("timer_pause", "awb", ("set a timer for", "ten minutes"), pause=0.4),
    Spec("create_function", "slt", ("create a function that adds two numbers",)),
    Spec("run_tests", "rms", ("run the tests",)),
    Spec("rename_variable", "awb", ("rename the variable count to total in the main file",)),
    Spec("open_file", "slt", ("open the file called server dot py",)),
    Spec("users_question", "rms", ("how many users signed up yesterday",)),
    Spec(
        "long_request",
        "slt",
        (
            "please write a python function that reads a list of numbers from a text file "
            "sorts them from the smallest to the largest removes any duplicates and then "
            "prints the result together with the total and the average of all the values",
        ),
    ),
)


def run(*argv: str) -> None:
    # Fixed argument lists built above, no shell: nothing untrusted reaches the command line.
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603


def synthesise(spec: Spec, out: Path, work: Path) -> str:
    """Write spec's FLAC to `out`; return the commands that made it (for the manifest)."""
    parts: list[str] = []
    made: list[str] = []
    for i, text in enumerate(spec.pieces):
        raw = work / f"{spec.id}-{i}.wav"
        run("flite", "-voice", spec.voice, "-t", text, "-o", str(raw))
        made.append(f"flite -voice {spec.voice} -t {shlex.quote(text)}")
        if i:
            gap = work / f"{spec.id}-gap{i}.wav"
            run(
                "sox",
                "-D",
                "-n",
                "-r",
                str(RATE),
                "-c",
                "1",
                "-b",
                "16",
                str(gap),
                "trim",
                "0",
                str(spec.pause),
            )
            parts.append(str(gap))
        parts.append(str(raw))
    # -D: no dither, so the same input gives the same samples on every run.
    run(
        "sox",
        "-D",
        *parts,
        "-r",
        str(RATE),
        "-c",
        "1",
        "-b",
        "16",
        str(out),
        "pad",
        str(LEAD),
        str(TAIL),
    )
    joined = f" + {spec.pause}s silence + ".join(made)
    return f"{joined} | sox -D rate {RATE} mono 16-bit, pad {LEAD}s/{TAIL}s, FLAC"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in SPECS:
            flac = out_dir / f"{spec.id}.flac"
            made = synthesise(spec, flac, Path(tmp))
            samples, rate = soundfile.read(str(flac), dtype="float32")
            bounds = speech_bounds(samples, rate)
            if bounds is None:
                print(f"{spec.id}: no speech measured", file=sys.stderr)
                return 1
            clips.append(
                {
                    "id": spec.id,
                    "file": flac.name,
                    "transcript": spec.transcript,
                    "speech_start": bounds[0],
                    "speech_end": bounds[1],
                    "duration": round(len(samples) / rate, 3),
                    "voice": spec.voice,
                    "made": made,
                }
            )
    manifest = {
        "version": 1,
        "sample_rate": RATE,
        "generator": "audio_fixtures/generate.py",
        "boundaries": "energy VAD (probed.audio.vad.speech_bounds) on the written FLAC",
        "clips": clips,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
