"""The one check of the JSON schemas in a constraint, before it is compiled: a schema
that is not one is a 400 naming the request's field. It runs where the compile runs
(a worker process the server can kill), since checking a large schema takes as long
as compiling it: a 0.6 MB ``anyOf`` took 22 s on the event loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema

from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar.backend import GuidedDecoding


def check_constraint(guided: GuidedDecoding) -> None:
    """InvalidRequestError if a schema of ``guided`` (the schema of json_schema, each
    json_schema content of a structural tag) is not a valid JSON schema."""
    if guided.kind not in ("json_schema", "structural_tag"):
        return
    try:
        spec = json.loads(guided.spec)
    except ValueError as error:
        raise InvalidRequestError(f"{guided.param}: the JSON schema is not JSON: {error}", param=guided.param) from error
    for schema in ([spec] if guided.kind == "json_schema" else _tag_schemas(spec)):
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except (jsonschema.SchemaError, TypeError) as error:
            message = error.message if isinstance(error, jsonschema.SchemaError) else str(error)
            raise InvalidRequestError(f"{guided.param}: not a valid JSON schema: {message}",
                                      param=guided.param) from error


def _tag_schemas(node: Any) -> Iterator[Any]:
    """The schemas of a structural tag's ``{"type": "json_schema", "json_schema": ...}`` parts."""
    stack = [node]
    while stack:  # iterative: a tag may nest deeper than Python's recursion limit
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "json_schema" and "json_schema" in item:
                yield item["json_schema"]
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
