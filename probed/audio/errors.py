"""The one error audio loading raises, so that `probed check` can report it plainly."""

from __future__ import annotations


class AudioError(Exception):
    """A clip or manifest that cannot be used: missing, corrupt, unsupported or inconsistent.

    The message names the file and what is wrong with it; it is meant for an operator.
    """
