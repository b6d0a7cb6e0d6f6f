"""The JSON Schema of the config file, for editors and `probed check --schema`."""

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from probed.config.durations import DURATION_PATTERN, format_duration
from probed.config.schema.root import config_model


class _SchemaGenerator(GenerateJsonSchema):
    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        # Show duration defaults the way they are written in a config ("15s"), not as floats
        # that the schema's own pattern would reject.
        default = json_schema.get("default")
        if json_schema.get("pattern") == DURATION_PATTERN and isinstance(default, float):
            json_schema["default"] = format_duration(default)
        return json_schema


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the config file, for editors and `probed check --schema`."""
    schema = config_model().model_json_schema(
        by_alias=True, mode="validation", schema_generator=_SchemaGenerator
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "probed configuration",
    }
