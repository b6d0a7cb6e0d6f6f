"""Scripted session setup: the steps a server wants before anything else (join, auth, subscribe).

Each step sends a templated message and/or waits for one that matches its filter, capturing
values (a session id, a room) for later steps and for the probe's own messages. Inbound messages
that match nothing are passed over (a server may greet first); one that matches the step's error
filter fails it at once. A failed step is a connect error with reason `setup`, its name in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import structlog
from websockets.exceptions import ConnectionClosed

from probed.config.schema.scripting import SetupStepConfig
from probed.dial import ConnectError
from probed.matching import Matched
from probed.template import Template, TemplateError

if TYPE_CHECKING:
    from probed.connection import Session


class SetupScript:
    def __init__(
        self,
        steps: Sequence[SetupStepConfig],
        variables: Mapping[str, str],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._steps = [
            (
                step,
                Template(step.send) if step.send is not None else None,
                step.expect.build() if step.expect is not None else None,
                step.error.build() if step.error is not None else None,
            )
            for step in steps
        ]
        self._variables = dict(variables)
        self._log = log

    async def run(self, session: Session) -> None:
        """Run every step on a fresh session; raises ConnectError("setup") naming the step."""
        variables = dict(self._variables)
        for step, template, expect, error in self._steps:
            try:
                async with asyncio.timeout(step.timeout):
                    if template is not None:
                        await session.send(template.render(variables))
                    while expect is not None:
                        data, _at = await session.recv()
                        if error is not None and isinstance(error.classify(data), Matched):
                            raise ConnectError(
                                "setup", "setup", f"step {step.name}: the server answered an error"
                            )
                        verdict = expect.classify(data)
                        if isinstance(verdict, Matched):
                            variables.update(verdict.captures)
                            break
            except TemplateError as exc:
                # Checked at load time; kept so no value can ever crash a probe mid-connect.
                raise ConnectError("setup", "setup", f"step {step.name}: {exc}") from None
            except TimeoutError:
                raise ConnectError(
                    "setup", "setup", f"step {step.name}: no matching reply within {step.timeout}s"
                ) from None
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                reason = session.redact(exc.rcvd.reason) if exc.rcvd is not None else ""
                raise ConnectError(
                    "setup", "setup", f"step {step.name}: closed with {code} {reason!r}".strip()
                ) from None
            self._log.debug("setup step done", step=step.name)
        session.variables = variables
