"""ProbeConfig, the union of all probe kinds, and PROBE_KINDS derived from it."""

from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field

from probed.config.schema.echo import EchoProbeConfig

# Add new probe kinds to this union; the discriminator, error messages, PROBE_KINDS and the
# JSON schema all follow from it.
ProbeConfig = Annotated[EchoProbeConfig, Field(discriminator="kind")]


def _union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        return list(get_args(annotation))
    return [annotation]


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    kind = get_args(field.annotation)[0]
    return kind if isinstance(kind, str) else None


PROBE_KINDS: Final[Mapping[str, type[BaseModel]]] = {
    kind: model for model in _union_members(ProbeConfig) if (kind := _kind_of(model)) is not None
}
