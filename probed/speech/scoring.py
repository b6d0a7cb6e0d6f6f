"""How a transcript is compared with the fixture's: normalised words, WER, partial matching."""

from __future__ import annotations

import re

import jiwer

_NOT_WORD = re.compile(r"[^\w\s']+")


def words(text: str) -> list[str]:
    """Lower case, punctuation dropped ("Run the tests." == "run the tests")."""
    return _NOT_WORD.sub(" ", text.lower()).replace("'", "").split()


def word_error_ratio(reference: str, hypothesis: str) -> float:
    """WER of `hypothesis` against `reference` after normalisation; 1.0 for an empty one."""
    ref = " ".join(words(reference))
    hyp = " ".join(words(hypothesis))
    if not ref:
        raise ValueError("the reference transcript has no words")
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


def _edit_distance(a: list[str], b: list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1]


def partial_matches(partial: str, reference: str) -> bool:
    """Whether an interim hypothesis is the start of what was said.

    Some providers emit early guesses that a user never sees confirmed; those must not count as
    a first partial. A partial counts when its first word is the reference's first word and its
    words differ from the reference's opening words of the same length by at most one word in
    three (real recognisers mishear the odd word mid-stream; a guess wrong from the start is
    rejected).
    """
    said = words(partial)
    expected = words(reference)
    if not said or not expected or said[0] != expected[0]:
        return False
    return _edit_distance(said, expected[: len(said)]) <= len(said) // 3
