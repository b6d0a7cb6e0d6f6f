"""StrictModel, the base of every config model: unknown keys refused, cross-field checks."""

from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from probed.config.validation import Problem, _problems_error


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check_semantics(self) -> Self:
        problems = self._semantic_problems()
        if problems:
            raise _problems_error(problems)
        return self

    def _semantic_problems(self) -> list[Problem]:
        """Cross-field checks; runs only once every field is individually valid."""
        return []
