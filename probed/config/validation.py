"""What validators and the loader share: the load context and the problem-carrying error.

parse_config() passes a _LoadContext as pydantic's validation context, so validators can tell
input from a config file from models built in code. Validators report problems through _fail()
and _problems_error(): one pydantic error that carries (location, message) pairs, plus the
offending input kept apart from the message, so the loader can expand it into separate issues
and leave the input out when it came from the environment (it may be a secret).
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

from pydantic_core import PydanticCustomError

Loc: TypeAlias = tuple[str | int, ...]
# A semantic problem found by a validator: where (relative to the model being validated) and what.
Problem: TypeAlias = tuple[Loc, str]


def _quoted(text: str, limit: int = 40) -> str:
    return json.dumps(text if len(text) <= limit else text[:limit] + "...", ensure_ascii=False)


@dataclass(frozen=True)
class _LoadContext:
    """Passed as pydantic validation context by parse_config(): marks input that came from a
    config file (where bare numbers are refused) and says where relative paths start."""

    base_dir: Path | None


_PROBLEMS_ERROR: Final = "probed_config"


def _problems_error(problems: Sequence[Problem], echo: str | None = None) -> PydanticCustomError:
    # One pydantic error can carry several problems with their own sub-locations; the loader
    # expands them back into separate issues. The summary keeps the error readable for code
    # that builds models directly and sees a plain ValidationError.
    summary = "; ".join(
        f"{_format_path(loc)}: {message}" if loc else message for loc, message in problems
    )
    if echo is not None:
        summary += f" (got {echo})"
    # `echo` is the offending input, kept apart from the message so the loader can leave it out
    # when the value came from an environment variable (which may well hold a secret).
    return PydanticCustomError(
        _PROBLEMS_ERROR,
        "{summary}",
        {"summary": summary, "problems": tuple(problems), "echo": echo},
    )


def _fail(message: str, echo: str | None = None) -> PydanticCustomError:
    return _problems_error([((), message)], echo)


_SIMPLE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


def _format_path(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _SIMPLE_KEY_RE.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text
