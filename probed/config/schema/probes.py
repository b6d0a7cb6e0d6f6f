"""The probe kinds the config accepts: a live map from kind to config model.

probed/kinds.py registers each kind's model here; the discriminated union the loader validates
`probes:` with, the JSON Schema and the "known kinds" hints all follow from this map.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field

from probed.config.schema.base import ProbeConfig

_MODELS: dict[str, type[ProbeConfig]] = {}
PROBE_KINDS: Final[Mapping[str, type[ProbeConfig]]] = MappingProxyType(_MODELS)


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    kind = get_args(field.annotation)[0]
    return kind if isinstance(kind, str) else None


def register_model(model: type[ProbeConfig]) -> str:
    """Accept probes of this model's kind (its `kind: Literal[...]`); returns the kind."""
    kind = _kind_of(model)
    if kind is None:
        raise TypeError(f"{model.__name__} needs a field kind: Literal['<kind>']")
    _MODELS[kind] = model
    return kind


def unregister_model(kind: str) -> None:
    _MODELS.pop(kind, None)


def probe_union() -> Any:
    """The discriminated union of every registered kind, for `probes: list[...]`."""
    models = tuple(_MODELS.values())
    if not models:
        return ProbeConfig
    member: Any = models[0] if len(models) == 1 else Union[models]  # noqa: UP007
    return Annotated[member, Field(discriminator="kind")]
